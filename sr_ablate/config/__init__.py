"""Configuration: where the config and sweep files are, their schema, their checks, the hash.

The files ship inside the package (``sr_ablate/resources/conf`` and ``.../sweeps``; in a
checkout these are links to the top-level ``conf/`` and ``sweeps/`` users edit), so a wheel
finds them from any folder.
"""
import os
from pathlib import Path

from sr_ablate import UserError

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


def split_config_dir(argv: list[str]) -> tuple[list[str], str | None]:
    """``argv`` without ``--config-dir DIR`` / ``--config-dir=DIR`` / ``-cd DIR``, and the
    folder as typed (the last one given, as Hydra takes it; None if none). UserError when a
    flag has no folder after it."""
    rest, given, i = [], None, 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--config-dir="):
            given = a.split("=", 1)[1]
        elif a in ("--config-dir", "-cd"):
            if i + 1 == len(argv):
                raise UserError(f"{a} needs a folder: {a} DIR (e.g. DIR/model/mynet.yaml "
                                "gives model=mynet)")
            given = argv[i + 1]
            i += 1
        else:
            rest.append(a)
        i += 1
    return rest, given
