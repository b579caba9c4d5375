"""A schedule from text or TOML: its ``[[jitter]]`` table, its one-line form
(``"lognormal(median=50us, sigma=0.8); scope=node"``), and a document's list of them.

A schedule may be detours alone (``detours = "periodic(...)"`` with no ``dist``, or the
line ``"detours=periodic(...)"``): its dist is then ``constant(0s)``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .detours import parse_detours
from .distributions import Constant, parse
from .errors import BadInput
from .schedule import Schedule
from .stragglers import Stragglers
from .temporal import parse_temporal

_TABLE_KEYS = ("name", "dist", "scope", "temporal", "stragglers", "detours")


def schedule_from_table(table: Mapping[str, Any]) -> Schedule:
    """A schedule from its ``[[jitter]]`` TOML table."""
    if not isinstance(table, Mapping):
        raise ValueError(f"jitter: expected a table, got {table!r}")
    unknown = [k for k in table if k not in _TABLE_KEYS]
    if unknown:
        raise ValueError(f"jitter: unknown key {unknown[0]!r} (keys: {', '.join(_TABLE_KEYS)})")
    if "dist" not in table and "detours" not in table:
        raise ValueError("jitter: missing key 'dist' (or 'detours', for detours alone)")
    stragglers = table.get("stragglers")
    if stragglers is not None:
        if not isinstance(stragglers, Mapping):
            raise ValueError(f"jitter: stragglers: expected a table, got {stragglers!r}")
        extra = set(stragglers) - {"ranks", "count", "links", "dist"}
        if extra:
            raise ValueError(f"jitter: stragglers: unknown key {sorted(extra)[0]!r} "
                             "(keys: ranks, count, links, dist)")
        if "dist" not in stragglers:
            raise ValueError("jitter: stragglers: missing key 'dist'")
        ranks = stragglers.get("ranks")
        if ranks is not None and not isinstance(ranks, (list, tuple)):
            raise ValueError(f"stragglers: ranks: expected a list of ranks, got {ranks!r}")
        stragglers = Stragglers(dist=_at("stragglers.dist", parse, stragglers["dist"]),
                                count=stragglers.get("count"), links=stragglers.get("links"),
                                ranks=tuple(ranks) if ranks is not None else None)
    detours = table.get("detours")
    return Schedule(dist=_at("dist", parse, table["dist"]) if "dist" in table
                    else Constant(value_s=0.0), name=table.get("name", ""),
                    scope=table.get("scope", "rank"),
                    temporal=_at("temporal", parse_temporal, table.get("temporal", "iid")),
                    stragglers=stragglers,
                    detours=_detours(detours) if detours is not None else None)


def _detours(value: Any) -> Any:
    """``parse_detours(value)``; its errors, which name ``detours: ...``, named
    ``jitter: detours: ...``."""
    try:
        return parse_detours(value)
    except BadInput as exc:
        raise BadInput(f"jitter: {exc}") from None


def _at(key: str, fn: Any, value: Any) -> Any:
    """``fn(value)``, with errors prefixed by the key they came from."""
    try:
        return fn(value)
    except ValueError as exc:
        text = str(exc)
        if text.startswith("jitter: "):
            raise
        kind = BadInput if isinstance(exc, BadInput) else ValueError
        raise kind(f"jitter: {key}: {text}") from None


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    """Split at ``sep`` except inside a quoted string within parentheses (a file name in
    ``empirical("a;b.txt")``); quotes at the top level (``name=bob's run``) are text."""
    parts, cur, quote, depth = [], [], None, 0
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'" and depth > 0:
            quote = ch
        elif ch in "()":
            depth = max(0, depth + (1 if ch == "(" else -1))
        elif ch == sep:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return parts


_LINE_KEYS = ("dist", "name", "scope", "temporal", "stragglers.ranks", "stragglers.count",
              "stragglers.links", "stragglers.dist", "detours")


def parse_schedule(spec: str | Mapping[str, Any] | Schedule) -> Schedule:
    """A schedule from the one-line form ``"lognormal(median=50us, sigma=0.8); scope=node;
    temporal=ar1(rho=0.9); stragglers.ranks=3; stragglers.dist=constant(500us);
    detours=periodic(period=10ms, duration=250us)"`` (the first part is the distribution,
    unless it is a key=value part), or from a ``[[jitter]]`` table."""
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, Mapping):
        return schedule_from_table(spec)
    if not isinstance(spec, str):
        raise ValueError(f"jitter: expected text or a table, got {spec!r}")
    parts = [p.strip() for p in _split_outside_quotes(spec, ";")]
    table: dict[str, Any] = {}
    strag: dict[str, Any] = {}
    for i, part in enumerate(parts):
        key, eq, value = part.partition("=")
        key = key.strip()
        if i == 0 and not (eq and key in _LINE_KEYS):
            key, value = "dist", part
        elif not eq or key not in _LINE_KEYS:
            raise ValueError(f"jitter {spec!r}: expected key=value with a key among "
                             f"{', '.join(_LINE_KEYS)}, got {part!r}")
        value = value.strip()
        if key.startswith("stragglers."):
            sub = key.split(".", 1)[1]
            if sub in strag:
                raise ValueError(f"jitter {spec!r}: {key} given twice")
            strag[sub] = _line_int(spec, key, value) if sub != "dist" else value
        else:
            if key in table:
                raise ValueError(f"jitter {spec!r}: {key} given twice")
            table[key] = value
    if strag:
        table["stragglers"] = strag
    return schedule_from_table(table)


def _line_int(spec: str, key: str, value: str) -> Any:
    if key.endswith("links"):  # "0-1,2-3"
        try:
            return [[int(r) for r in pair.split("-")] for pair in value.split(",")]
        except ValueError:
            raise ValueError(f"jitter {spec!r}: {key}: expected SENDER-RECEIVER pairs "
                             f"such as 0-1,2-3, got {value!r}") from None
    try:
        ints = [int(v) for v in value.split(",")]
    except ValueError:
        raise ValueError(f"jitter {spec!r}: {key}: expected integers, got {value!r}") from None
    return ints if key.endswith("ranks") else ints[0] if len(ints) == 1 else value


def schedules_from_toml(doc: Mapping[str, Any]) -> list[Schedule]:
    """The ``[[jitter]]`` array of a parsed TOML document; names must be unique."""
    items = doc.get("jitter")
    if not isinstance(items, list) or not items:
        raise ValueError("jitter: expected at least one [[jitter]] table")
    return check_unique_names([schedule_from_table(t) for t in items])


def check_unique_names(schedules: list[Schedule]) -> list[Schedule]:
    """``schedules`` unchanged, or a ValueError naming the first repeated name."""
    seen: set[str] = set()
    for s in schedules:
        if s.name in seen:
            raise ValueError(f"jitter: name: {s.name!r} is used twice")
        seen.add(s.name)
    return schedules
