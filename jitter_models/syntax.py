"""The call syntax shared by distributions and temporal models, and argument conversion.

``lognormal(median=50us, sigma=0.8)``, ``constant(5us)``,
``mixture(0.99*constant(5us), 0.01*constant(2ms))``, ``ar1(rho=0.9)``, ``iid``.

The same parameters also arrive as TOML tables (``{family = "lognormal", median = "50us",
sigma = 0.8}``). Both forms go through one table of declared parameters per family, so the
error messages are the same whichever form a user wrote.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from .units import UNIT_EXPONENTS, parse_duration

Kind = Literal["duration", "number", "dist", "path", "components"]


@dataclass(frozen=True)
class Param:
    """One declared parameter of a family."""

    name: str
    kind: Kind

    @property
    def attr(self) -> str:
        """The Python attribute: durations carry their unit (``median`` -> ``median_s``)."""
        return f"{self.name}_s" if self.kind == "duration" else self.name


@dataclass(frozen=True)
class Word:
    """A bare token: a number, a duration, a path."""

    text: str
    col: int


@dataclass(frozen=True)
class Text:
    """A quoted string."""

    text: str
    col: int


@dataclass(frozen=True)
class Product:
    """``weight*call``: a weighted mixture component."""

    weight: Word
    call: Call


@dataclass(frozen=True)
class Arg:
    """``key=value`` or a positional value (key None)."""

    key: str | None
    value: Node
    col: int


@dataclass(frozen=True)
class Call:
    """``name(args...)``, or a bare ``name``."""

    name: str
    args: tuple[Arg, ...]
    col: int


Node = Word | Text | Product | Call

_SPECIAL = "(),=*"
# Calls nested deeper than this are refused (the parser recurses once per level; a real
# spec nests a handful: clip(shifted(mixture(...)))).
MAX_NESTING = 64


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    """(type, text, 1-based column) tokens; type is one of ( ) , = * word str end."""
    out: list[tuple[str, str, int]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c in _SPECIAL:
            out.append((c, c, i + 1))
            i += 1
        elif c in "\"'":
            j = text.find(c, i + 1)
            if j < 0:
                raise SpecSyntaxError(text, i + 1, "unterminated string")
            out.append(("str", text[i + 1 : j], i + 1))
            i = j + 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in _SPECIAL + "\"'":
                j += 1
            out.append(("word", text[i:j], i + 1))
            i = j
    out.append(("end", "", n + 1))
    return out


class SpecSyntaxError(ValueError):
    """Malformed call text; the message carries the 1-based column."""

    def __init__(self, text: str, col: int, what: str):
        super().__init__(f"malformed spec {text!r}: column {col}: {what}")


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0
        self.depth = 0

    def peek(self, k: int = 0) -> tuple[str, str, int]:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def take(self, kind: str, what: str) -> tuple[str, str, int]:
        tok = self.peek()
        if tok[0] != kind:
            found = "end of text" if tok[0] == "end" else repr(tok[1])
            raise SpecSyntaxError(self.text, tok[2], f"expected {what}, found {found}")
        self.i += 1
        return tok

    def call(self) -> Call:
        _, name, col = self.take("word", "a name")
        if self.peek()[0] != "(":
            return Call(name, (), col)
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise SpecSyntaxError(self.text, col, f"calls nested more than {MAX_NESTING} deep")
        self.take("(", "'('")
        args: list[Arg] = []
        if self.peek()[0] != ")":
            while True:
                args.append(self.arg())
                if self.peek()[0] == ",":
                    self.i += 1
                    continue
                break
        self.take(")", "',' or ')'")
        self.depth -= 1
        return Call(name, tuple(args), col)

    def arg(self) -> Arg:
        t0, t1 = self.peek(), self.peek(1)
        if t0[0] == "word" and t1[0] == "=":
            self.i += 2
            return Arg(t0[1], self.value(), t0[2])
        return Arg(None, self.value(), t0[2])

    def value(self) -> Node:
        tok = self.peek()
        if tok[0] == "str":
            self.i += 1
            return Text(tok[1], tok[2])
        if tok[0] != "word":
            found = "end of text" if tok[0] == "end" else repr(tok[1])
            raise SpecSyntaxError(self.text, tok[2], f"expected a value, found {found}")
        nxt = self.peek(1)[0]
        if nxt == "(":
            return self.call()
        self.i += 1
        if nxt == "word" and self.peek()[1] in UNIT_EXPONENTS:  # "50 us", as in TOML
            self.i += 1
            return Word(f"{tok[1]} {self.toks[self.i - 1][1]}", tok[2])
        if nxt == "*":
            self.i += 1
            return Product(Word(tok[1], tok[2]), self.call())
        return Word(tok[1], tok[2])


def parse_call(text: str) -> Call:
    """Parse one whole call; anything after it is an error naming the column."""
    if not isinstance(text, str):
        raise ValueError(f"malformed spec {text!r}: expected text")
    p = _Parser(text)
    call = p.call()
    p.take("end", "end of text")
    return call


# --- names a user gives (schedules, specs, models) ---------------------------------


def _printable(c: str) -> bool:
    return c == " " or c.isprintable()


def check_printable(field: str, value: str) -> str:
    """``value``, or a ValueError naming ``field`` if it holds a character that is not
    printable: NUL, a control character (the ESC of an ANSI sequence), a line or paragraph
    separator, a format character (a bidi override). Names reach terminals, reports, CSV
    cells and file names; the space is the one separator allowed."""
    for i, c in enumerate(value):
        if not _printable(c):
            raise ValueError(f"{field}: must be printable text (no control characters), "
                             f"got {value!r} (U+{ord(c):04X} at index {i})")
    return value


def escape(text: str) -> str:
    """``text`` with each non-printable character written as its escape (``\\x1b``,
    ``\\u202e``), printable ones (accents, µ) kept: safe to print to a terminal."""
    return "".join(c if _printable(c) else repr(c)[1:-1] for c in str(text))


# --- conversion of arguments to constructor keywords -------------------------------

DistBuilder = Callable[[object], object]


def _number(family: str, field: str, value: object) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{family}: {field}: a bool is not a number: {value!r}")
    if isinstance(value, (Word, Text)):
        value = value.text
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{family}: {field}: expected a number, got {value!r}") from None
    if not isinstance(value, (int, float)):
        raise ValueError(f"{family}: {field}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{family}: {field}: must be a finite number, got {value!r}")
    return float(value)


def _convert(family: str, param: Param, value: object, dist: DistBuilder) -> object:
    field = param.name
    if isinstance(value, Product):
        raise ValueError(f"{family}: {field}: 'weight*dist' is only allowed in mixture components")
    if param.kind == "number":
        return _number(family, field, value)
    if param.kind == "duration":
        raw = value.text if isinstance(value, (Word, Text)) else value
        try:
            return parse_duration(raw)
        except ValueError as exc:
            raise ValueError(f"{family}: {field}: {exc}") from None
    if param.kind == "path":
        raw = value.text if isinstance(value, (Word, Text)) else value
        if not isinstance(raw, str) or not raw:
            raise ValueError(f"{family}: {field}: expected a file name, got {raw!r}")
        return check_printable(f"{family}: {field}", raw)
    if param.kind == "dist":
        if isinstance(value, Word):
            raise ValueError(f"{family}: {field}: expected a distribution, got {value.text!r}")
        try:
            return dist(value.text if isinstance(value, Text) else value)
        except ValueError as exc:  # the path to the nested field: "clip: dist: lognormal: ..."
            raise ValueError(f"{family}: {field}: {exc}") from None
    raise AssertionError(param.kind)  # components are handled by the caller


def kwargs_from_call(
    family: str, params: Sequence[Param], call: Call, dist: DistBuilder
) -> dict[str, object]:
    """Positional then keyword arguments of ``call`` mapped onto ``params``."""
    if params and params[0].kind == "components":
        comps = []
        for a in call.args:
            if a.key is not None or not isinstance(a.value, Product):
                raise ValueError(
                    f"{family}: components: each argument must be 'weight*dist' (column {a.col})"
                )
            comps.append((_number(family, "weight", a.value.weight), dist(a.value.call)))
        return {params[0].attr: tuple(comps)}
    names = [p.name for p in params]
    out: dict[str, object] = {}
    seen_key = False
    for pos, a in enumerate(call.args):
        if a.key is None:
            if seen_key:
                raise ValueError(f"{family}: positional argument after keyword (column {a.col})")
            if pos >= len(params):
                raise ValueError(
                    f"{family}: too many arguments (parameters: {', '.join(names)})"
                )
            param = params[pos]
        else:
            seen_key = True
            if a.key not in names:
                raise ValueError(
                    f"{family}: unknown parameter {a.key!r} (parameters: {', '.join(names)})"
                )
            param = params[names.index(a.key)]
            if param.attr in out:
                raise ValueError(f"{family}: parameter {a.key!r} given twice")
        out[param.attr] = _convert(family, param, a.value, dist)
    _require_all(family, params, out)
    return out


def kwargs_from_table(
    family: str, params: Sequence[Param], table: Mapping[str, object], dist: DistBuilder,
    skip: tuple[str, ...] = ("family",),
) -> dict[str, object]:
    """The keys of a TOML table (less ``skip``) mapped onto ``params``."""
    names = [p.name for p in params]
    out: dict[str, object] = {}
    for key, value in table.items():
        if key in skip:
            continue
        if key not in names:
            raise ValueError(
                f"{family}: unknown parameter {key!r} (parameters: {', '.join(names)})"
            )
        param = params[names.index(key)]
        if param.kind == "components":
            out[param.attr] = _components_from_table(family, value, dist)
        else:
            out[param.attr] = _convert(family, param, value, dist)
    _require_all(family, params, out)
    return out


def _components_from_table(family: str, value: object, dist: DistBuilder) -> tuple:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{family}: components: expected a list of {{weight, dist}} tables")
    comps = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping) or set(item) != {"weight", "dist"}:
            raise ValueError(
                f"{family}: components[{i}]: expected a table with keys weight and dist, "
                f"got {item!r}"
            )
        comps.append((_number(family, f"components[{i}].weight", item["weight"]),
                      dist(item["dist"])))
    return tuple(comps)


def _require_all(family: str, params: Sequence[Param], got: Mapping[str, object]) -> None:
    for p in params:
        if p.attr not in got:
            raise ValueError(f"{family}: missing parameter {p.name!r}")
