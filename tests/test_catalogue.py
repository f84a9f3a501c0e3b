"""docs/bad-input.md stays true: at least 25 bad inputs, each naming tests that exist."""
from __future__ import annotations

import ast
import re

from conftest import REPO

CATALOGUE = REPO / "docs" / "bad-input.md"


def rows() -> list[list[str]]:
    lines = [x for x in CATALOGUE.read_text().splitlines() if re.match(r"\| \d+ \|", x)]
    return [[c.strip() for c in x.strip("|").split(" | ")] for x in lines]


def test_the_catalogue_holds_at_least_25_numbered_bad_inputs():
    numbers = [int(r[0]) for r in rows()]
    assert len(numbers) >= 25 and numbers == list(range(1, len(numbers) + 1))
    assert all(len(r) == 5 and all(r) for r in rows())


def test_every_test_the_catalogue_names_exists():
    defined: dict[str, set[str]] = {}
    for number, *_, tests in rows():
        names = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", tests)
        assert names, f"row {number} names no test"
        for path, name in names:
            if path not in defined:
                tree = ast.parse((REPO / path).read_text())
                defined[path] = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            assert name in defined[path], f"row {number}: {path}::{name} does not exist"
