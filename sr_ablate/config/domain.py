"""A config key's domain: the values it takes (type, bounds, choices, URI schemes...), and
the one line that says what is wrong with a value outside it. The table of every key's domain
is ``schema.DOMAINS``."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Domain:
    """The values one config key takes.

    ``kind``: ``int`` (a whole number, not a bool), ``float`` (any finite number: an int is
    fine), ``bool``, ``str`` (never empty), ``switch`` (a bool or a word, e.g. ``auto``) or
    ``list`` (each item in ``item``). ``low`` and
    ``high`` bound numbers (both given for every number: no key takes 1e30), inclusive unless
    ``low_open``/``high_open``. ``choices``: the only values; ``odd``: odd numbers only;
    ``null``: None is allowed too; ``pattern``: a str must match it in full; ``schemes``: a str
    is a URI with one of these schemes (``noun`` names what it is); ``length``: a list's exact
    length; ``fix``: the advice, where the one made from the fields is not clear enough.
    """
    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    odd: bool = False
    null: bool = False
    pattern: str | None = None
    schemes: tuple[str, ...] = ()
    noun: str = ""
    item: Domain | None = None
    length: int | None = None
    fix: str = ""

    def describe(self) -> str:
        """What to give instead, e.g. ``a whole number from 1 to 1024``."""
        if self.fix:
            text = self.fix
        elif self.choices:
            text = "one of: " + ", ".join(str(c).lower() if isinstance(c, bool) else str(c)
                                          for c in self.choices)
        elif self.kind == "bool":
            text = "true or false"
        elif self.kind == "str":
            text = "a non-empty string"
        elif self.kind == "list":
            n = f"{self.length} items" if self.length else "items"
            text = f"a list of {n}, each {self.item.describe()}"
        else:
            noun = ("an odd whole number" if self.odd else "a whole number") \
                if self.kind == "int" else "a number"
            low, high = _num(self.low), _num(self.high)
            if not (self.low_open or self.high_open):
                text = f"{noun} from {low} to {high}"
            else:
                text = (f"{noun} {'>' if self.low_open else '>='} {low} and "
                        f"{'<' if self.high_open else '<='} {high}")
        return f"{text} (or null)" if self.null else text

    def problem(self, value) -> str | None:
        """What is wrong with ``value`` (``must be positive``), or None when it is in the domain."""
        if value is None:
            return None if self.null else "is not set"
        if self.kind == "list":
            if not isinstance(value, (list, tuple)):
                return "has the wrong type"
            if self.length is not None and len(value) != self.length:
                return f"must hold {self.length} values"
            for v in value:
                wrong = self.item.problem(v)
                if wrong:
                    return f"holds {v!r}, which {wrong}"
            return None
        if not _is(value, self.kind):
            return "has the wrong type"
        if self.choices:
            return None if value in self.choices else "is not valid"
        if self.kind == "str":
            if not value.strip():
                return "is empty"
            if self.pattern and not re.fullmatch(self.pattern, value):
                return "is not valid"
            return self._uri_problem(value) if self.schemes else None
        if self.kind in ("int", "float"):
            return self._number_problem(value)
        return None

    def _number_problem(self, value) -> str | None:
        if isinstance(value, float) and not math.isfinite(value):
            return "is not a finite number"
        if value < self.low or (self.low_open and value == self.low):
            if self.kind == "int":
                return f"must be at least {_num(self.low + 1 if self.low_open else self.low)}"
            if value <= 0 < self.low or (self.low == 0 and self.low_open):
                return "must be positive"
            if self.low == 0:
                return "must not be negative"
            return f"must be {'above' if self.low_open else 'at least'} {_num(self.low)}"
        if value > self.high or (self.high_open and value == self.high):
            return f"must be {'below' if self.high_open else 'at most'} {_num(self.high)}"
        if self.odd and value % 2 == 0:
            return "must be odd"
        return None

    def _uri_problem(self, value: str) -> str | None:
        if value == "databricks" and "databricks" in self.schemes:  # the default profile
            return None
        scheme, sep, rest = value.partition("://")
        if value.startswith("file:"):
            if self.noun == "tracking URI":
                return ("is a file store, which MLflow 3 does not open unless opted in, and "
                        "which sweeps cannot share")
            return f"is a file, not a {self.noun}"
        if not sep:
            return f"is not a {self.noun} (no scheme://)"
        base = scheme.split("+")[0].lower()  # postgresql+psycopg2 -> postgresql
        if base not in self.schemes:
            return f"uses {scheme}://, which is not a {self.noun} scheme"
        if base == "sqlite":
            if not rest.strip("/"):
                return "is an in-memory database, gone when the process ends"
            if not rest.startswith("/"):
                return "names no database file (sqlite:/// takes three slashes, then the path)"
            return None
        if base != "databricks" and not rest.split("/")[0].rpartition("@")[2]:
            return "names no host"
        return None


def _num(x: float) -> str:
    """1000000000 as typed, 1e6 for a float bound, 0.5 as 0.5."""
    if isinstance(x, int):
        return str(x)
    return f"{x:g}".replace("e+0", "e").replace("e+", "e")


def _is(value, kind: str) -> bool:
    if isinstance(value, bool):
        return kind in ("bool", "switch")
    return {"int": isinstance(value, int), "float": isinstance(value, (int, float)),
            "str": isinstance(value, str), "switch": isinstance(value, str),
            "bool": False}.get(kind, False)


def Int(low: int, high: int, **kw) -> Domain:
    return Domain("int", low, high, **kw)


def Float(low: float, high: float, **kw) -> Domain:
    return Domain("float", low, high, **kw)


def Choice(*values, kind: str = "str") -> Domain:
    return Domain(kind, choices=tuple(values))


def ListOf(item: Domain, **kw) -> Domain:
    return Domain("list", item=item, **kw)


BOOL = Domain("bool")
TEXT = Domain("str")                   # a name: any non-empty string
PATH = Domain("str", null=True)        # a file or folder; whether it exists is checked on use
STEPS = 10**9                          # no budget, interval or schedule runs longer than this
SCALE = Float(1, 8, low_open=True)     # upscaling factor: x1 is no super-resolution
WIDTH = Int(1, 1024)                   # feature channels (the big EDSR: 256)
DEPTH = Int(1, 1024)                   # blocks, conv layers, recurrence steps
KERNEL = Int(1, 31, odd=True)          # conv kernel side: odd keeps the image size
