"""Schedules: who is delayed, at which site, by how much. The unit that sweeps vary.

A schedule's delays are a pure function of (seed, rank or node, step count, site count):
every rank derives its own delays with no communication, and analysis recomputes exactly
what any rank was asked to do. Streams are keyed by the seed and the rank (``scope =
"rank"``), the node (``"node"``) or nothing (``"global"``), never by the world size, so the
runs at N = 1, 2, 4 ... share their draws and scaling curves are paired comparisons. Only
straggler selection by ``count`` uses the world size.

Temporal structure (``temporal.py``) acts on the flattened (step, site) sequence of one
stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .distributions import Distribution, parse
from .syntax import check_printable
from .temporal import IID, Temporal, parse_temporal
from .units import MAX_DELAY_NS, MAX_DELAY_S

Scope = Literal["rank", "node", "global", "link"]
SCOPES: tuple[str, ...] = ("rank", "node", "global", "link")

# Stream tags mixed into the SeedSequence entropy, so the streams never overlap.
_BASE, _STRAGGLER, _SELECT, _LINK, _LINK_STRAGGLER = 0, 1, 2, 3, 4

@dataclass(frozen=True, kw_only=True)
class Stragglers:
    """Chosen ranks (or, for ``scope = "link"``, links) whose delays come from another
    distribution (with the schedule's temporal structure, from their own stream)."""

    dist: Distribution
    """The stragglers' delay distribution."""
    ranks: tuple[int, ...] | None = None
    """Explicit straggler ranks; ranks >= world size are simply absent at that size."""
    count: int | None = None
    """Or: this many ranks (at most the world size), a seeded choice per world size."""
    links: tuple[tuple[int, int], ...] | None = None
    """Or (link scope): slow links as (sender, receiver) pairs, e.g. ((0, 1),)."""

    def __post_init__(self) -> None:
        given = [k for k in ("ranks", "count", "links") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("stragglers: give exactly one of 'ranks', 'count' and 'links'")
        if self.links is not None:
            object.__setattr__(self, "links", _links(self.links))
        if self.ranks is not None:
            ranks = tuple(self.ranks) if not isinstance(self.ranks, (str, bytes)) else None
            if ranks is None or not ranks or any(
                    isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 0
                    for r in ranks):
                raise ValueError(f"stragglers: ranks: expected a non-empty list of ranks "
                                 f"(integers >= 0), got {self.ranks!r}")
            object.__setattr__(self, "ranks", tuple(sorted({int(r) for r in ranks})))
        if self.count is not None and (isinstance(self.count, bool) or not isinstance(
                self.count, (int, np.integer)) or self.count < 1):
            raise ValueError(f"stragglers: count: must be an integer >= 1, got {self.count!r}")
        if not isinstance(self.dist, Distribution):
            raise ValueError(f"stragglers: dist: not a distribution: {self.dist!r}")

    def chosen(self, seed: int, world_size: int) -> frozenset[int]:
        """The straggler ranks at this world size (none for straggler links)."""
        if self.links is not None:
            return frozenset()
        if self.ranks is not None:
            return frozenset(r for r in self.ranks if r < world_size)
        rng = np.random.default_rng(np.random.SeedSequence([seed, _SELECT, world_size]))
        k = min(int(self.count), world_size)
        return frozenset(int(r) for r in rng.choice(world_size, size=k, replace=False))


def _links(value: Any) -> tuple[tuple[int, int], ...]:
    """Validated (sender, receiver) pairs, sorted, without repeats."""
    bad = ValueError(f"stragglers: links: expected a non-empty list of [sender, receiver] "
                     f"rank pairs of two different ranks, got {value!r}")
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
        raise bad
    out = set()
    for pair in value:
        if (isinstance(pair, (str, bytes)) or not isinstance(pair, (list, tuple))
                or len(pair) != 2 or any(isinstance(r, bool) or not isinstance(
                    r, (int, np.integer)) or r < 0 for r in pair) or pair[0] == pair[1]):
            raise bad
        out.add((int(pair[0]), int(pair[1])))
    return tuple(sorted(out))


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """A named jitter model: distribution, scope, temporal structure, stragglers."""

    dist: Distribution
    """Delay distribution of ordinary ranks."""
    name: str = ""
    """Label in reports; defaults to the schedule's one-line text."""
    scope: Scope = "rank"
    """rank: each rank draws its own; node: ranks of a node share; global: all share;
    link: each message of an explicit algorithm, on its sender (per-hop network jitter)."""
    temporal: Temporal = field(default_factory=IID)
    """Structure in time over the (step, site) sequence."""
    stragglers: Stragglers | None = None
    """Ranks with another distribution, if any."""

    def __post_init__(self) -> None:
        if not isinstance(self.dist, Distribution):
            raise ValueError(f"jitter: dist: not a distribution: {self.dist!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"jitter: scope: must be one of {', '.join(SCOPES)}, "
                             f"got {self.scope!r}")
        if not isinstance(self.temporal, Temporal):
            raise ValueError(f"jitter: temporal: not a temporal model: {self.temporal!r}")
        if (not isinstance(self.name, str) or any(c in self.name for c in ";\n")
                or self.name != self.name.strip()):
            raise ValueError(f"jitter: name: must be text without ';', newlines or "
                             f"surrounding spaces, got {self.name!r}")
        check_printable("jitter: name", self.name)
        if self.stragglers is not None and (self.stragglers.links is not None) != (
                self.scope == "link"):
            raise ValueError("jitter: stragglers: links go with scope = 'link', and "
                             "scope = 'link' takes links, not ranks or count, got scope="
                             f"{self.scope!r}")
        if not self.name:
            object.__setattr__(self, "name", self._default_name())

    def delays(self, seed: int, rank: int, node: int, world_size: int, n_steps: int,
               n_sites: int) -> np.ndarray:
        """float64 seconds, shape [n_steps, n_sites]: what ``rank`` must wait before each
        collective. Bit-identical for identical arguments."""
        seed = _check_int("seed", seed, 0)
        world_size = _check_int("world_size", world_size, 1)
        rank = _check_int("rank", rank, 0)
        if rank >= world_size:
            raise ValueError(f"rank must be < world_size ({world_size}), got {rank}")
        node = _check_int("node", node, 0)
        n_steps, n_sites = _check_int("n_steps", n_steps, 0), _check_int("n_sites", n_sites, 0)
        length = n_steps * n_sites
        if self.scope == "link":  # its delays are the messages' (link_delays), not the rank's
            return np.zeros((n_steps, n_sites), dtype=np.float64)
        if self.stragglers is not None and rank in self.stragglers.chosen(seed, world_size):
            entropy, dist = [seed, _STRAGGLER, 0, rank], self.stragglers.dist
        else:
            key = {"rank": rank, "node": node, "global": 0}[self.scope]
            entropy, dist = [seed, _BASE, SCOPES.index(self.scope), key], self.dist
        rng = np.random.default_rng(np.random.SeedSequence(entropy))
        out = np.asarray(self.temporal.draw(dist, rng, length), dtype=np.float64)
        return out.reshape(n_steps, n_sites)

    def delays_ns(self, seed: int, rank: int, node: int, world_size: int, n_steps: int,
                  n_sites: int) -> tuple[np.ndarray, int]:
        """:meth:`delays` as int64 nanoseconds, what an injector is given: each draw
        clipped to ``MAX_DELAY_NS`` (one hour), and the number of draws clipped. An
        unbounded law (pareto, lognormal, ...) can draw more than any clock can wait; as
        an int64, 2**63 ns or more would wrap to a negative delay and inject nothing."""
        return _to_ns(self.delays(seed, rank, node, world_size, n_steps, n_sites), self.name)

    def link_delays(self, seed: int, src: int, dst: int, n_messages: int) -> np.ndarray:
        """float64 seconds: the departure delays of the first ``n_messages`` messages that
        ``src`` sends to ``dst`` (scope = "link"). The stream is keyed by the seed and the
        (sender, receiver) pair only, so a link's draws are the same at every world size;
        the temporal structure runs along the link's sequence of messages."""
        if self.scope != "link":
            raise ValueError(f"jitter {self.name!r}: link delays need scope = 'link', "
                             f"got scope={self.scope!r}")
        seed = _check_int("seed", seed, 0)
        src, dst = _check_int("src", src, 0), _check_int("dst", dst, 0)
        n_messages = _check_int("n_messages", n_messages, 0)
        if self.stragglers is not None and (src, dst) in self.stragglers.links:
            entropy, dist = [seed, _LINK_STRAGGLER, src, dst], self.stragglers.dist
        else:
            entropy, dist = [seed, _LINK, src, dst], self.dist
        rng = np.random.default_rng(np.random.SeedSequence(entropy))
        return np.asarray(self.temporal.draw(dist, rng, n_messages), dtype=np.float64)

    def link_delays_ns(self, seed: int, src: int, dst: int, n_messages: int
                       ) -> tuple[np.ndarray, int]:
        """:meth:`link_delays` as int64 ns, clipped as :meth:`delays_ns` clips."""
        return _to_ns(self.link_delays(seed, src, dst, n_messages), self.name)

    def rank_dist(self, seed: int, rank: int, world_size: int) -> Distribution:
        """The marginal law of one delay of ``rank`` at this world size."""
        straggler = (self.stragglers is not None
                     and rank in self.stragglers.chosen(seed, world_size))
        return self.temporal.marginal(self.stragglers.dist if straggler else self.dist)

    def site_groups(self, seed: int, world_size: int,
                    ranks_per_node: int = 8) -> list[tuple[Distribution, int]]:
        """Independent streams at one site, as (marginal, count) groups: what the max over
        ranks of one collective's delays is a max of. Ranks are placed on nodes in blocks
        of ``ranks_per_node`` (``layout.node_of``, as the worker keys the draws); a
        straggler always has its own stream. A link-scoped schedule has none: its delays
        act on the messages inside an explicit algorithm, not before the collective."""
        from .layout import node_of

        world_size = _check_int("world_size", world_size, 1)
        ranks_per_node = _check_int("ranks_per_node", ranks_per_node, 1)
        chosen = (self.stragglers.chosen(seed, world_size)
                  if self.stragglers is not None else frozenset())
        if self.scope == "link":
            return []
        if self.scope == "rank":
            n_streams = world_size - len(chosen)
        elif self.scope == "node":
            n_streams = (len({node_of(r, ranks_per_node) for r in range(world_size)
                              if r not in chosen}) if chosen
                         else node_of(world_size - 1, ranks_per_node) + 1)  # blocks: O(1)
        else:
            n_streams = 1 if len(chosen) < world_size else 0
        groups = []
        if n_streams:
            groups.append((self.temporal.marginal(self.dist), n_streams))
        if chosen:
            groups.append((self.temporal.marginal(self.stragglers.dist), len(chosen)))
        return groups

    def _default_name(self) -> str:
        return "; ".join(self._parts())

    def __str__(self) -> str:
        parts = self._parts()
        if self.name != self._default_name():
            parts.append(f"name={self.name}")
        return "; ".join(parts)

    def _parts(self) -> list[str]:
        """The one-line form's parts, all but the name."""
        parts = [str(self.dist)]
        if self.scope != "rank":
            parts.append(f"scope={self.scope}")
        if not isinstance(self.temporal, IID):
            parts.append(f"temporal={self.temporal}")
        if self.stragglers is not None:
            s = self.stragglers
            if s.ranks is not None:
                parts.append("stragglers.ranks=" + ",".join(map(str, s.ranks)))
            elif s.links is not None:
                parts.append("stragglers.links=" + ",".join(f"{a}-{b}" for a, b in s.links))
            else:
                parts.append(f"stragglers.count={s.count}")
            parts.append(f"stragglers.dist={s.dist}")
        return parts

    def to_table(self) -> dict[str, Any]:
        """The canonical TOML ``[[jitter]]`` table."""
        out: dict[str, Any] = {"name": self.name, "dist": str(self.dist), "scope": self.scope,
                               "temporal": str(self.temporal)}
        if self.name == self._default_name():
            del out["name"]  # implied; it holds the ';' an explicit name may not
        if self.stragglers is not None:
            s = self.stragglers
            key = ({"ranks": list(s.ranks)} if s.ranks is not None
                   else {"links": [list(p) for p in s.links]} if s.links is not None
                   else {"count": s.count})
            out["stragglers"] = {**key, "dist": str(s.dist)}
        return out


# --- parsing ----------------------------------------------------------------------


_TABLE_KEYS = ("name", "dist", "scope", "temporal", "stragglers")


def schedule_from_table(table: Mapping[str, Any]) -> Schedule:
    """A schedule from its ``[[jitter]]`` TOML table."""
    if not isinstance(table, Mapping):
        raise ValueError(f"jitter: expected a table, got {table!r}")
    unknown = [k for k in table if k not in _TABLE_KEYS]
    if unknown:
        raise ValueError(f"jitter: unknown key {unknown[0]!r} (keys: {', '.join(_TABLE_KEYS)})")
    if "dist" not in table:
        raise ValueError("jitter: missing key 'dist'")
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
    return Schedule(dist=_at("dist", parse, table["dist"]), name=table.get("name", ""),
                    scope=table.get("scope", "rank"),
                    temporal=_at("temporal", parse_temporal, table.get("temporal", "iid")),
                    stragglers=stragglers)


def _at(key: str, fn: Any, value: Any) -> Any:
    """``fn(value)``, with errors prefixed by the key they came from."""
    try:
        return fn(value)
    except ValueError as exc:
        text = str(exc)
        if text.startswith("jitter: "):
            raise
        raise ValueError(f"jitter: {key}: {text}") from None


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
              "stragglers.links", "stragglers.dist")


def parse_schedule(spec: str | Mapping[str, Any] | Schedule) -> Schedule:
    """A schedule from the one-line form ``"lognormal(median=50us, sigma=0.8); scope=node;
    temporal=ar1(rho=0.9); stragglers.ranks=3; stragglers.dist=constant(500us)"`` (the
    first part is the distribution), or from a ``[[jitter]]`` table."""
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


def _to_ns(s: np.ndarray, name: str) -> tuple[np.ndarray, int]:
    """Seconds to int64 ns for an injector: each draw clipped to ``MAX_DELAY_NS`` (one
    hour), and the number clipped. An unbounded law (pareto, lognormal, ...) can draw more
    than any clock can wait; as an int64, 2**63 ns or more would wrap to a negative delay
    and inject nothing."""
    if np.isnan(s).any():
        raise ValueError(f"jitter {name!r}: drew a NaN delay")
    over = s > MAX_DELAY_S
    ns = np.rint(np.where(over, MAX_DELAY_S, s) * 1e9).astype(np.int64)
    return np.minimum(ns, MAX_DELAY_NS), int(np.count_nonzero(over))


__all__ = ["SCOPES", "Schedule", "Stragglers", "check_unique_names", "parse_schedule",
           "schedule_from_table", "schedules_from_toml"]
