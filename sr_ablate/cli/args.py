"""``key=value`` arguments of the commands that apply a trained model (upscale, export)."""
from __future__ import annotations

from sr_ablate import UserError


def key_values(argv: list[str], keys, command: str, example: str) -> dict[str, str]:
    """``["model=x", "output=y"]`` -> ``{"model": "x", "output": "y"}``; UserError (one line)
    for an argument that is no ``key=value`` of ``keys`` or without ``model=``."""
    args = {}
    for a in argv:
        key, eq, value = a.partition("=")
        if not eq or key not in keys:
            raise UserError(f"unknown argument {a!r}; {command} takes "
                            f"{', '.join(k + '=' for k in keys)} (see {command} --help)")
        args[key] = value
    if not args.get("model"):
        raise UserError(f"say which trained model: e.g. sr-ablate {command} {example}")
    return args
