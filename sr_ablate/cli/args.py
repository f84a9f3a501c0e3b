"""What the commands that apply a trained model share: ``key=value`` arguments (upscale,
export) and ``main``'s handling of ``--help`` and one-line errors (upscale, export, evaluate)."""
from __future__ import annotations

import re
import sys
from collections.abc import Callable

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


def plain(doc: str) -> str:
    """A module docstring as a command's ``--help`` shows it: reStructuredText's double
    backticks (there for the API docs) dropped, the text left as it reads."""
    return re.sub(r"``(.+?)``", r"\1", doc, flags=re.DOTALL)


def run(doc: str, argv: list[str] | None, work: Callable[[list[str]], int | None]) -> int:
    """A command's ``main``: ``--help`` prints ``doc``; ``work(argv)`` gives the exit status
    (None: 0); a UserError is its one ``error:`` line on stderr and status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(plain(doc))
        return 0
    try:
        return work(argv) or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
