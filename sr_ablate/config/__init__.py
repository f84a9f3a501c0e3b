"""Configuration: where the config and sweep files are, their schema, their checks, the hash.

The files ship inside the package (``sr_ablate/resources/conf`` and ``.../sweeps``; in a
checkout these are links to the top-level ``conf/`` and ``sweeps/`` users edit), so a wheel
finds them from any folder.
"""
import os
from pathlib import Path

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
CONF_DIR = str(RESOURCES / "conf")
SWEEPS_DIR = RESOURCES / "sweeps"
# The user's own config folder (``sr-ablate --config-dir DIR`` sets it; the jobs and Optuna
# workers a command starts inherit it): searched after the built-in conf/.
CONFIG_DIR_ENV = "SR_ABLATE_CONFIG_DIR"


def config_dirs() -> list[Path]:
    """The folders config groups are found in: the built-in conf/, then the user's, if set."""
    mine = os.environ.get(CONFIG_DIR_ENV)
    return [Path(CONF_DIR), *([Path(mine)] if mine else [])]
