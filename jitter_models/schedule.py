"""A schedule: who is delayed, at which site, by how much. The unit that sweeps vary.

A schedule's delays are a pure function of (seed, rank or node, step count, site count):
every rank derives its own delays with no communication, and analysis recomputes exactly
what any rank was asked to do. Streams are keyed by the seed and the rank (``scope =
"rank"``), the node (``"node"``) or nothing (``"global"``), never by the world size, so the
runs at N = 1, 2, 4 ... share their draws and scaling curves are paired comparisons. Only
straggler selection by ``count`` uses the world size.

Temporal structure (``temporal.py``) acts on the flattened (step, site) sequence of one
stream. Detours (``detours.py``) act on the time axis instead: each rank's phase comes from
(seed, rank) whatever the scope, and they are not part of :meth:`Schedule.delays` or of
the marginals (:meth:`Schedule.rank_dist`, :meth:`Schedule.site_groups`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .detours import Detours
from .distributions import Constant, Distribution
from .stragglers import _BASE, _LINK, _LINK_STRAGGLER, _STRAGGLER, Stragglers
from .syntax import check_printable
from .temporal import IID, Temporal
from .units import MAX_DELAY_NS, MAX_DELAY_S

Scope = Literal["rank", "node", "global", "link"]
SCOPES: tuple[str, ...] = ("rank", "node", "global", "link")


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """A named jitter model: distribution, scope, temporal structure, stragglers, detours."""

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
    detours: Detours | None = None
    """Time-axis noise of each rank, or None."""

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
        if self.detours is not None and not isinstance(self.detours, Detours):
            raise ValueError(f"jitter: detours: not a detours model: {self.detours!r}")
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
        """The marginal law of one delay of ``rank`` at this world size. The detours are
        not included: they act on the time axis, not on the delays."""
        straggler = (self.stragglers is not None
                     and rank in self.stragglers.chosen(seed, world_size))
        return self.temporal.marginal(self.stragglers.dist if straggler else self.dist)

    def site_groups(self, seed: int, world_size: int,
                    ranks_per_node: int = 8) -> list[tuple[Distribution, int]]:
        """Independent streams at one site, as (marginal, count) groups: what the max over
        ranks of one collective's delays is a max of. Ranks are placed on nodes in blocks
        of ``ranks_per_node`` (``layout.node_of``, as the worker keys the draws); a
        straggler always has its own stream. A link-scoped schedule has none: its delays
        act on the messages inside an explicit algorithm, not before the collective. The
        detours are not included (they pause work on the time axis; see ``simulate``)."""
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
        """The one-line form's parts, all but the name; a schedule of detours alone (its
        dist ``constant(0s)``) starts with its detours."""
        alone = self.detours is not None and self.dist == Constant(value_s=0.0)
        parts = [] if alone else [str(self.dist)]
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
        if self.detours is not None:
            parts.append(f"detours={self.detours}")
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
        if self.detours is not None:
            out["detours"] = str(self.detours)
        return out


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
