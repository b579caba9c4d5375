"""The network the simulator runs on: per-tier latency and bandwidth, and the cost of the
backend's own (native) collectives.

Two tiers: ``intra`` for messages between ranks on one node, ``inter`` for the rest. A
message of ``nbytes`` costs ``alpha_s + nbytes / bandwidth_Bps`` on its tier. Nodes hold
``ranks_per_node`` consecutive ranks (``layout.node_of``), as everywhere else.

``native_time`` models the backend's own call as a chain of dependent synchronous steps,
each as slow as the slowest link it uses (the pipelined ring of NCCL or MPI runs at the
pace of its bottleneck link, which is what nccl-tests' busbw measures): with zero alpha, a
native ring all_reduce then shows exactly ``bandwidth_gbps`` as its busbw.

- all_reduce: the cheaper of a ring (2(N-1) steps of nbytes/N) and recursive doubling
  (log2 N steps of the whole buffer; a non-power-of-two N adds the fold-in and fold-out
  steps, as ``algorithm_builders`` folds, and the ranks that do not fold start at once:
  the longest chain of steps, see ``_doubling``), as a tuner picks the faster. Both are
  the pattern's own recurrence (``pattern_sim.finish``) with each step at its slowest hop;
- all_gather, reduce_scatter: a ring, N-1 steps of nbytes/N (nbytes: the whole buffer of
  N chunks, as a Pattern's working buffer);
- all_to_all: a pairwise exchange, N-1 steps of nbytes/N;
- broadcast: a binomial tree, ceil(log2 N) rounds of the whole buffer, one after another
  (the root sends in every round), as in Thakur & Gropp's lg N (alpha + n beta).

Every native call also costs ``call_s`` (default 0), on one rank as well: the host's own
time in the library's call (argument checks, the local copy of the rank's own block, the
progress engine), which LogP calls o. It is what a call costs a rank that waits for no
one, with the network's part taken away: on one host over shared memory MPI_Alltoallv of
256 KiB costs ~180 us a call from Python at N = 1 and 2 alike (benchmarks/validate_moe.py).
Explicit algorithms pay no ``call_s``: each of their messages is its own call, whose cost
is in ``alpha``.

A ring or pairwise step is on the inter tier as soon as N > ranks_per_node (every shift of
the ranks then moves some rank to another node); a recursive-doubling or binomial step is
intra-node iff none of its pairs crosses a node. Each model costs O(log N) (a
recursive-doubling step with ranks_per_node not a power of two: O(ranks_per_node**2)).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .algorithm_builders import NATIVE_COLLECTIVES
from .units import format_duration, parse_duration

_TIER_KEYS = ("alpha", "bandwidth_gbps")
_NETWORK_KEYS = (*_TIER_KEYS, "intra", "call")
_REAL = (int, float, np.integer, np.floating)


def _is_int(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))


@dataclass(frozen=True, kw_only=True)
class Tier:
    """One tier of links: a message of n bytes costs ``alpha_s + n / bandwidth_Bps``."""

    alpha_s: float
    """Per-message latency, seconds (>= 0)."""
    bandwidth_Bps: float
    """Bytes per second per rank and direction (> 0, finite)."""

    def __post_init__(self) -> None:
        a, b = self.alpha_s, self.bandwidth_Bps
        if isinstance(a, bool) or not isinstance(a, _REAL) or not math.isfinite(a) or a < 0:
            raise ValueError(f"alpha_s: must be a finite number >= 0, got {a!r}")
        if isinstance(b, bool) or not isinstance(b, _REAL) or not math.isfinite(b) or b <= 0:
            raise ValueError(f"bandwidth_Bps: must be a finite number > 0, got {b!r}")
        object.__setattr__(self, "alpha_s", float(a))
        object.__setattr__(self, "bandwidth_Bps", float(b))

    def message_s(self, nbytes: Any) -> Any:
        """Seconds for one message of ``nbytes`` (a number or an array)."""
        return self.alpha_s + np.asarray(nbytes, dtype=np.float64) / self.bandwidth_Bps


@dataclass(frozen=True, kw_only=True)
class Network:
    """Two tiers of links and how ranks sit on nodes (module docstring)."""

    inter: Tier
    """Links between ranks on different nodes."""
    intra: Tier
    """Links between ranks on one node."""
    ranks_per_node: int
    """Consecutive ranks per node (``layout.node_of``)."""
    call_s: float = 0.0
    """Host seconds of every native call, on every N including 1 (module docstring)."""

    def __post_init__(self) -> None:
        for name in ("inter", "intra"):
            if not isinstance(getattr(self, name), Tier):
                raise ValueError(f"{name}: not a Tier: {getattr(self, name)!r}")
        c = self.call_s
        if isinstance(c, bool) or not isinstance(c, _REAL) or not math.isfinite(c) or c < 0:
            raise ValueError(f"call_s: must be a finite number >= 0, got {c!r}")
        object.__setattr__(self, "call_s", float(c))
        if not _is_int(self.ranks_per_node) or self.ranks_per_node < 1:
            raise ValueError(f"ranks_per_node: must be an integer >= 1, "
                             f"got {self.ranks_per_node!r}")
        object.__setattr__(self, "ranks_per_node", int(self.ranks_per_node))

    @classmethod
    def from_table(cls, table: Mapping, ranks_per_node: int) -> Network:
        """The TOML ``[network]`` table: ``alpha`` (a duration, or 0) and ``bandwidth_gbps``
        (GB/s per rank and direction, as nccl-tests prints busbw; 1 GB = 1e9 bytes), an
        optional ``[network.intra]`` with the same keys (absent: the inter tier), and an
        optional ``call`` (a duration: ``call_s``; absent: 0)."""
        inter = _tier(table, "network", _NETWORK_KEYS)
        intra = inter if table.get("intra") is None else _tier(
            table["intra"], "network.intra", _TIER_KEYS)
        call_s = 0.0
        if "call" in table:
            try:
                call_s = parse_duration(table["call"])
            except ValueError as exc:
                raise ValueError(f"network.call: {exc}") from None
        return cls(inter=inter, intra=intra, ranks_per_node=ranks_per_node, call_s=call_s)

    def to_table(self) -> dict[str, Any]:
        """The canonical ``[network]`` table (``intra`` and ``call`` only where they
        differ from the defaults)."""
        out = _tier_table(self.inter)
        if self.intra != self.inter:
            out["intra"] = _tier_table(self.intra)
        if self.call_s:
            out["call"] = format_duration(self.call_s)
        return out

    def hop_time(self, src: Any, dst: Any, nbytes: Any) -> np.ndarray:
        """Seconds for messages of ``nbytes`` from ``src`` to ``dst`` (arrays broadcast):
        the intra tier where both ranks are on one node, else the inter tier."""
        k = self.ranks_per_node
        same = np.asarray(src) // k == np.asarray(dst) // k
        alpha = np.where(same, self.intra.alpha_s, self.inter.alpha_s)
        bandwidth = np.where(same, self.intra.bandwidth_Bps, self.inter.bandwidth_Bps)
        return alpha + np.asarray(nbytes, dtype=np.float64) / bandwidth

    def native_time(self, collective: str, world_size: int, nbytes: float) -> float:
        """Seconds of the backend's own ``collective`` on ``world_size`` ranks with a
        working buffer of ``nbytes`` (module docstring); ``call_s`` on one rank."""
        if collective not in NATIVE_COLLECTIVES:
            raise ValueError(f"collective: unknown {collective!r} "
                             f"(known: {', '.join(NATIVE_COLLECTIVES)})")
        if not _is_int(world_size) or world_size < 1:
            raise ValueError(f"world_size: must be an integer >= 1, got {world_size!r}")
        if isinstance(nbytes, bool) or not isinstance(nbytes, _REAL) \
                or not math.isfinite(nbytes) or nbytes < 0:
            raise ValueError(f"nbytes: must be a finite number >= 0, got {nbytes!r}")
        n = int(world_size)
        if n == 1:
            return self.call_s
        return self.call_s + float(_NATIVE[collective](self, n, float(nbytes)))

    def all_to_all_v_time(self, pair_bytes: Any) -> float:
        """Seconds of the backend's own uneven all-to-all: ``pair_bytes[i, j]`` bytes from
        rank i to rank j (the diagonal stays local), taken as the pairwise exchange's N - 1
        steps (at step k rank r sends to r + k) each as long as its slowest message, plus
        ``call_s``; with even splits of S / N this is the all_to_all model above."""
        b = np.asarray(pair_bytes, dtype=np.float64)
        n = b.shape[0] if b.ndim == 2 else 0
        if b.shape != (n, n) or n < 1 or np.any(b < 0) or not np.all(np.isfinite(b)):
            raise ValueError(f"pair_bytes: must be a square array of finite byte counts "
                             f">= 0, got shape {b.shape}")
        r = np.arange(n)
        return self.call_s + float(sum(np.max(self.hop_time(r, (r + k) % n,
                                                            b[r, (r + k) % n]))
                                       for k in range(1, n)))

    # --- the native models (module docstring) ------------------------------------------

    def _tier(self, crosses: bool) -> Tier:
        return self.inter if crosses else self.intra

    def _ring(self, n: int, nbytes: float, steps: int) -> float:
        return steps * self._tier(n > self.ranks_per_node).message_s(nbytes / n)

    def _all_reduce(self, n: int, nbytes: float) -> float:
        return min(self._ring(n, nbytes, 2 * (n - 1)), self._doubling(n, nbytes))

    def _doubling(self, n: int, nbytes: float) -> float:
        """The longest chain of recursive doubling's synchronous steps. The ranks that do
        not fold start the exchanges at once, so a chain through every exchange takes the
        fold-in or the fold-out, not both: both folds go with the exchanges at distances
        below 2**t only, t = bit_length(rem - 1) (two ranks q, q' < rem differ in those
        bits only, and in all of them for some pair)."""
        h = [self._tier(c).message_s(nbytes) for c in doubling_crossings(n, self.ranks_per_node)]
        rem = n - (1 << (n.bit_length() - 1))
        if not rem:
            return sum(h)
        fold, exchanges = h[0], h[1:-1]
        return max(fold + sum(exchanges), 2 * fold + sum(exchanges[:(rem - 1).bit_length()]))

    def _broadcast(self, n: int, nbytes: float) -> float:
        # Round j: ranks below 2**j send to rank + 2**j; it touches ranks up to
        # min(2**(j+1), n) - 1 and crosses a node iff one of them is off node 0.
        rounds = (n - 1).bit_length()
        return sum(self._tier(min(2 ** (j + 1), n) > self.ranks_per_node).message_s(nbytes)
                   for j in range(rounds))


_NATIVE = {
    "all_reduce": Network._all_reduce,
    "all_gather": lambda net, n, b: net._ring(n, b, n - 1),
    "reduce_scatter": lambda net, n, b: net._ring(n, b, n - 1),
    "all_to_all": lambda net, n, b: net._ring(n, b, n - 1),
    "broadcast": Network._broadcast,
}


def _tier(table: Any, path: str, allowed: tuple[str, ...]) -> Tier:
    """One tier from its TOML table at key path ``path``."""
    if not isinstance(table, Mapping):
        raise ValueError(f"{path}: expected a table with keys alpha and bandwidth_gbps, "
                         f"got {table!r}")
    for key in table:
        if key not in allowed:
            raise ValueError(f"{path}.{key}: unknown key (known: {', '.join(allowed)})")
    for key in _TIER_KEYS:
        if key not in table:
            raise ValueError(f"{path}.{key}: missing (alpha: a duration per message such as "
                             "'2us'; bandwidth_gbps: GB/s per rank and direction)")
    try:
        alpha_s = parse_duration(table["alpha"])
    except ValueError as exc:
        raise ValueError(f"{path}.alpha: {exc}") from None
    gbps = table["bandwidth_gbps"]
    if isinstance(gbps, bool) or not isinstance(gbps, (int, float)):
        raise ValueError(f"{path}.bandwidth_gbps: expected a number of GB/s, got {gbps!r}")
    try:
        bps = float(gbps) * 1e9
    except OverflowError:
        bps = math.inf
    if math.isnan(bps) or bps <= 0:
        raise ValueError(f"{path}.bandwidth_gbps: must be > 0, got {gbps!r}")
    if not math.isfinite(bps):
        raise ValueError(f"{path}.bandwidth_gbps: must be finite (at most 1.7e299), "
                         f"got {gbps!r}")
    return Tier(alpha_s=alpha_s, bandwidth_Bps=bps)


def _tier_table(tier: Tier) -> dict[str, Any]:
    # Exact for every rate read from a table (b * 1e9 / 1e9 rounds back to b); a rate
    # built in B/s that is no float times 1e9 comes back one ulp off.
    return {"alpha": format_duration(tier.alpha_s), "bandwidth_gbps": tier.bandwidth_Bps / 1e9}


# --- recursive doubling: which steps cross a node --------------------------------------

@functools.lru_cache(maxsize=256)
def doubling_crossings(n: int, ranks_per_node: int) -> tuple[bool, ...]:
    """For each step of ``algorithm_builders``' recursive doubling on ``n`` ranks (fold-in,
    the exchanges at distance 1, 2, 4 ..., fold-out), whether any of its pairs crosses a
    node. O(log n) steps, each O(1) or, when ranks_per_node is not a power of two,
    O(ranks_per_node**2) at most. Cached."""
    k = ranks_per_node
    p = 1 << (n.bit_length() - 1)
    rem = n - p
    # Fold pairs (2i, 2i+1), i < rem, cross iff an odd multiple of k is <= 2 rem - 1.
    fold = [k % 2 == 1 and k <= 2 * rem - 1] if rem else []
    exchanges = []
    d = 1
    while d < p:
        exchanges.append(n > k and _exchange_crosses(p, rem, d, k))
        d *= 2
    return tuple(fold + exchanges + fold)


def _exchange_crosses(p: int, rem: int, d: int, k: int) -> bool:
    """Does a pair (active[q], active[q + d]), q < p with bit d clear, cross a node?
    active[q] = 2q + 1 for q < rem (the folded ranks), q + rem after."""
    def crosses(q: np.ndarray, x: np.ndarray, y: np.ndarray) -> bool:
        return bool(np.any(x // k != y // k))

    # Both folded (q + d < rem): ranks 2q+1 and 2q+2d+1, a fixed distance 2d.
    # Neither (q >= rem): ranks q+rem and q+rem+d, a fixed distance d.
    for lo, hi, a, b, dist in ((0, rem - d, 2, 1, 2 * d), (rem, p, 1, rem, d)):
        q0 = _first_clear(lo, d)
        if q0 >= hi:
            continue
        if dist >= k:
            return True
        # Whether a pair crosses depends on q mod 2d and (a q + b) mod k only.
        period = 2 * d * k // math.gcd(2 * d, k)
        q = np.arange(q0, min(hi, q0 + period), dtype=np.int64)
        q = q[(q & d) == 0]
        if crosses(q, a * q + b, a * q + b + dist):
            return True
    # Mixed (q < rem <= q + d): ranks 2q+1 and q+d+rem, at distance d+rem-1-q >= d.
    lo = max(0, rem - d)
    q0 = _first_clear(lo, d)
    if q0 >= rem:
        return False
    if d + rem - 1 - q0 >= k:
        return True
    q = np.arange(q0, rem, dtype=np.int64)  # fewer than k values: the distance is < k
    q = q[(q & d) == 0]
    return crosses(q, 2 * q + 1, q + d + rem)


def _first_clear(lo: int, d: int) -> int:
    """The smallest q >= lo whose bit d (a power of two) is clear."""
    lo = max(lo, 0)
    return lo if lo & d == 0 else (lo // (2 * d) + 1) * (2 * d)
