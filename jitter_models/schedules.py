"""Schedules: who is delayed, at which site, by how much. The unit that sweeps vary.

A schedule's delays are a pure function of (seed, rank or node, step count, site count):
every rank derives its own delays with no communication, and analysis recomputes exactly
what any rank was asked to do. Streams are keyed by the seed and the rank (``scope =
"rank"``), the node (``"node"``) or nothing (``"global"``), never by the world size, so the
runs at N = 1, 2, 4 ... share their draws and scaling curves are paired comparisons. Only
straggler selection by ``count`` uses the world size.

Temporal structure acts on the flattened (step, site) sequence of one stream. Kinds that
need the run's own clock (periodic detours, trace replay) are not sequence models; they
will get their own interface taking event times, beside :class:`Temporal`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from scipy import signal, special

from .composite import Mixture
from .distributions import Distribution, parse
from .syntax import Call, Param, kwargs_from_call, kwargs_from_table, parse_call

Scope = Literal["rank", "node", "global"]
SCOPES: tuple[str, ...] = ("rank", "node", "global")

# Stream tags mixed into the SeedSequence entropy, so the streams never overlap.
_BASE, _STRAGGLER, _SELECT = 0, 1, 2

TEMPORALS: dict[str, type[Temporal]] = {}


def _register(cls: type[Temporal]) -> type[Temporal]:
    TEMPORALS[cls.kind] = cls
    return cls


class Temporal(ABC):
    """Structure in time of one stream of delays whose marginal is a given distribution."""

    kind: ClassVar[str]
    params: ClassVar[tuple[Param, ...]] = ()

    @abstractmethod
    def draw(self, dist: Distribution, rng: np.random.Generator, length: int) -> np.ndarray:
        """``length`` consecutive delays."""

    def marginal(self, dist: Distribution) -> Distribution:
        """The law of any one delay of the stream."""
        return dist

    def __str__(self) -> str:
        if not self.params:
            return self.kind
        args = ", ".join(f"{p.name}={_fmt(getattr(self, p.attr), p)}" for p in self.params)
        return f"{self.kind}({args})"


def _fmt(value: Any, p: Param) -> str:
    return repr(float(value)) if p.kind == "number" else str(value)


@_register
@dataclass(frozen=True)
class IID(Temporal):
    """Independent draws."""

    kind: ClassVar[str] = "iid"

    def draw(self, dist: Distribution, rng: np.random.Generator, length: int) -> np.ndarray:
        return dist.sample(rng, length)


@_register
@dataclass(frozen=True, kw_only=True)
class AR1(Temporal):
    """Gaussian copula: a stationary latent AR(1) z_t = rho z_{t-1} + sqrt(1-rho^2) e_t over
    the collectives of one stream (the flattened (step, site) sequence), mapped through Phi
    and the distribution's inverse CDF, so the marginal is exactly the distribution.
    ``rho`` is the lag-1 correlation of the latent normal, not of the delays."""

    kind: ClassVar[str] = "ar1"
    params: ClassVar[tuple[Param, ...]] = (Param("rho", "number"),)
    rho: float
    """Latent normal lag-1 correlation, in (-1, 1)."""

    def __post_init__(self) -> None:
        if isinstance(self.rho, bool) or not -1 < float(self.rho) < 1:
            raise ValueError(f"ar1: rho: must be in (-1, 1), got {self.rho!r}")
        object.__setattr__(self, "rho", float(self.rho))

    def draw(self, dist: Distribution, rng: np.random.Generator, length: int) -> np.ndarray:
        z_prev = rng.standard_normal()  # stationary start: z_{-1} ~ N(0, 1)
        eps = rng.standard_normal(length)
        c = math.sqrt(1.0 - self.rho**2)
        z = signal.lfilter([c], [1.0, -self.rho], eps, zi=[self.rho * z_prev])[0]
        # Lower half through ppf, upper half through isf: both tails keep full precision.
        out = np.empty(length)
        low = z < 0
        out[low] = dist.ppf(special.ndtr(z[low]))
        out[~low] = dist.isf(special.ndtr(-z[~low]))
        return out


@_register
@dataclass(frozen=True, kw_only=True)
class Bursty(Temporal):
    """A stationary two-state Markov chain over the collectives of one stream (the
    flattened (step, site) sequence): in the calm state a delay is drawn from the
    schedule's distribution, in a burst from ``burst`` instead. Calm -> burst with
    probability ``p_enter`` per collective, burst -> calm with ``p_exit``; the marginal is
    the mixture pi*burst + (1-pi)*dist with pi = p_enter / (p_enter + p_exit)."""

    kind: ClassVar[str] = "bursty"
    params: ClassVar[tuple[Param, ...]] = (
        Param("p_enter", "number"), Param("p_exit", "number"), Param("burst", "dist"))
    p_enter: float
    """Probability per collective of entering a burst, in (0, 1]."""
    p_exit: float
    """Probability per collective of leaving a burst, in (0, 1]."""
    burst: Distribution
    """The delay distribution inside a burst."""

    def __post_init__(self) -> None:
        for name in ("p_enter", "p_exit"):
            v = getattr(self, name)
            if isinstance(v, bool) or not 0 < float(v) <= 1:
                raise ValueError(f"bursty: {name}: must be in (0, 1], got {v!r}")
            object.__setattr__(self, name, float(v))
        if not isinstance(self.burst, Distribution):
            raise ValueError(f"bursty: burst: not a distribution: {self.burst!r}")

    @property
    def burst_fraction(self) -> float:
        return self.p_enter / (self.p_enter + self.p_exit)

    def states(self, rng: np.random.Generator, length: int) -> np.ndarray:
        """Boolean burst indicator per position (stationary start; runs are geometric)."""
        first = bool(rng.random() < self.burst_fraction)
        p_first, p_second = (self.p_exit, self.p_enter) if first else (self.p_enter, self.p_exit)
        runs = np.empty(0, dtype=np.int64)
        while runs.sum() < length:
            pairs = max(8, int(length / (1 / self.p_enter + 1 / self.p_exit)) + 8)
            chunk = np.empty(2 * pairs, dtype=np.int64)
            chunk[0::2] = rng.geometric(p_first, pairs)
            chunk[1::2] = rng.geometric(p_second, pairs)
            runs = np.concatenate([runs, chunk])
        # Cut the last run short so the expansion costs `length`, however long the runs.
        ends = np.cumsum(runs)
        k = int(np.searchsorted(ends, length)) + 1 if length else 0
        runs = runs[:k]
        if k:
            runs[-1] -= ends[k - 1] - length
        labels = np.resize(np.array([first, not first]), runs.size)
        return np.repeat(labels, runs)

    def draw(self, dist: Distribution, rng: np.random.Generator, length: int) -> np.ndarray:
        burst = self.states(rng, length)
        out = dist.sample(rng, length)
        out[burst] = self.burst.sample(rng, int(burst.sum()))
        return out

    def marginal(self, dist: Distribution) -> Distribution:
        pi = self.burst_fraction
        if pi >= 1.0:
            return self.burst
        return Mixture(components=((1.0 - pi, dist), (pi, self.burst)))


@dataclass(frozen=True, kw_only=True)
class Stragglers:
    """Chosen ranks whose delays come from another distribution (with the schedule's
    temporal structure, from their own per-rank stream)."""

    dist: Distribution
    """The stragglers' delay distribution."""
    ranks: tuple[int, ...] | None = None
    """Explicit straggler ranks; ranks >= world size are simply absent at that size."""
    count: int | None = None
    """Or: this many ranks (at most the world size), a seeded choice per world size."""

    def __post_init__(self) -> None:
        if (self.ranks is None) == (self.count is None):
            raise ValueError("stragglers: give exactly one of 'ranks' and 'count'")
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
        """The straggler ranks at this world size."""
        if self.ranks is not None:
            return frozenset(r for r in self.ranks if r < world_size)
        rng = np.random.default_rng(np.random.SeedSequence([seed, _SELECT, world_size]))
        k = min(int(self.count), world_size)
        return frozenset(int(r) for r in rng.choice(world_size, size=k, replace=False))


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
    """rank: each rank draws its own; node: ranks of a node share; global: all share."""
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
        if self.stragglers is not None and rank in self.stragglers.chosen(seed, world_size):
            entropy, dist = [seed, _STRAGGLER, 0, rank], self.stragglers.dist
        else:
            key = {"rank": rank, "node": node, "global": 0}[self.scope]
            entropy, dist = [seed, _BASE, SCOPES.index(self.scope), key], self.dist
        rng = np.random.default_rng(np.random.SeedSequence(entropy))
        out = np.asarray(self.temporal.draw(dist, rng, length), dtype=np.float64)
        return out.reshape(n_steps, n_sites)

    def rank_dist(self, seed: int, rank: int, world_size: int) -> Distribution:
        """The marginal law of one delay of ``rank`` at this world size."""
        straggler = (self.stragglers is not None
                     and rank in self.stragglers.chosen(seed, world_size))
        return self.temporal.marginal(self.stragglers.dist if straggler else self.dist)

    def site_groups(self, seed: int, world_size: int,
                    ranks_per_node: int = 8) -> list[tuple[Distribution, int]]:
        """Independent streams at one site, as (marginal, count) groups: what the max over
        ranks of one collective's delays is a max of. Ranks are placed on nodes in blocks
        of ``ranks_per_node``; a straggler always has its own stream."""
        world_size = _check_int("world_size", world_size, 1)
        ranks_per_node = _check_int("ranks_per_node", ranks_per_node, 1)
        chosen = (self.stragglers.chosen(seed, world_size)
                  if self.stragglers is not None else frozenset())
        if self.scope == "rank":
            n_streams = world_size - len(chosen)
        elif self.scope == "node":
            n_streams = (len({r // ranks_per_node for r in range(world_size) if r not in chosen})
                         if chosen else -(-world_size // ranks_per_node))
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
            key = {"ranks": list(s.ranks)} if s.ranks is not None else {"count": s.count}
            out["stragglers"] = {**key, "dist": str(s.dist)}
        return out


# --- parsing ----------------------------------------------------------------------


def parse_temporal(spec: str | Mapping[str, Any] | Call | Temporal) -> Temporal:
    """``"iid"``, ``"ar1(rho=0.9)"``, ``"bursty(p_enter=0.01, p_exit=0.2,
    burst=constant(2ms))"``, or a table ``{kind = "ar1", rho = 0.9}``."""
    if isinstance(spec, Temporal):
        return spec
    if isinstance(spec, str):
        spec = parse_call(spec)
    if isinstance(spec, Call):
        cls = _temporal_kind(spec.name)
        return cls(**kwargs_from_call(cls.kind, cls.params, spec, parse))
    if isinstance(spec, Mapping):
        cls = _temporal_kind(spec.get("kind"))
        return cls(**kwargs_from_table(cls.kind, cls.params, spec, parse, skip=("kind",)))
    raise ValueError(f"jitter: temporal: expected text or a table, got {spec!r}")


def _temporal_kind(name: Any) -> type[Temporal]:
    if name not in TEMPORALS:
        known = ", ".join(sorted(TEMPORALS))
        raise ValueError(f"jitter: temporal: unknown kind {name!r} (known: {known})")
    return TEMPORALS[name]


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
        extra = set(stragglers) - {"ranks", "count", "dist"}
        if extra:
            raise ValueError(f"jitter: stragglers: unknown key {sorted(extra)[0]!r} "
                             "(keys: ranks, count, dist)")
        if "dist" not in stragglers:
            raise ValueError("jitter: stragglers: missing key 'dist'")
        ranks = stragglers.get("ranks")
        if ranks is not None and not isinstance(ranks, (list, tuple)):
            raise ValueError(f"stragglers: ranks: expected a list of ranks, got {ranks!r}")
        stragglers = Stragglers(dist=parse(stragglers["dist"]), count=stragglers.get("count"),
                                ranks=tuple(ranks) if ranks is not None else None)
    return Schedule(dist=parse(table["dist"]), name=table.get("name", ""),
                    scope=table.get("scope", "rank"),
                    temporal=parse_temporal(table.get("temporal", "iid")),
                    stragglers=stragglers)


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
              "stragglers.dist")


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


__all__ = ["AR1", "IID", "SCOPES", "Bursty", "Schedule", "Stragglers", "Temporal",
           "check_unique_names",
           "parse_schedule", "parse_temporal", "schedule_from_table", "schedules_from_toml"]
