"""Configuration: where the config and sweep files are, their schema, their checks, the hash.

The files ship inside the package (``sr_ablate/resources/conf`` and ``.../sweeps``; in a
checkout these are links to the top-level ``conf/`` and ``sweeps/`` users edit), so a wheel
finds them from any folder.
"""
from pathlib import Path

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
CONF_DIR = str(RESOURCES / "conf")
SWEEPS_DIR = RESOURCES / "sweeps"
