"""Clock offsets between ranks: exact on one host, estimated by ping-pong across hosts.

Ranks on one host share CLOCK_MONOTONIC, so their offset is exactly 0 (detected by host
name). A rank on another host estimates its offset to rank 0 by ping-pong over the
backend (the sample with the smallest round trip; its half round trip bounds the error),
once before and once after the run; ``aligned`` interpolates between the two in time, so
a drifting clock is followed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .timing import now_ns


@dataclass(frozen=True, kw_only=True)
class ClockOffset:
    """This rank's clock relative to rank 0's: t_rank0 = t_here + offset_ns."""

    offset_ns: int | None
    """None where it could not be measured (another host, no estimate yet)."""
    uncertainty_ns: int | None
    """Half-width of the offset's error bound (0 on the same host)."""
    t_ns: int | None = None
    """When the estimate holds, on rank 0's clock (the chosen sample's midpoint); None
    for an exact same-host zero, which holds at every time."""


def same_host_offsets(hostnames: list[str]) -> list[ClockOffset]:
    """Exact zero for ranks on rank 0's host; unknown (to be measured) for the others."""
    return [ClockOffset(offset_ns=0, uncertainty_ns=0) if h == hostnames[0]
            else ClockOffset(offset_ns=None, uncertainty_ns=None) for h in hostnames]


def offset_from_samples(t0: np.ndarray, t1: np.ndarray, t2: np.ndarray) -> ClockOffset:
    """Rank 0 sent at t0 and got the reply at t2 (its clock); the peer stamped t1 (its
    clock) in between. The offset (t_rank0 = t_peer + offset) from the sample with the
    smallest round trip: the midpoint of [t0, t2] minus t1, to within half that trip,
    holding at that midpoint."""
    rtt = t2 - t0
    if np.any(rtt < 0):
        raise ValueError("ping-pong samples with a negative round trip")
    i = int(np.argmin(rtt))
    mid = int((t0[i] + t2[i]) // 2)
    return ClockOffset(offset_ns=mid - int(t1[i]), uncertainty_ns=int(rtt[i] + 1) // 2,
                       t_ns=mid)


def ping_pong(backend: Any, peer: int, rounds: int = 64,
              clock: Callable[[], int] = now_ns) -> ClockOffset | None:
    """Run on rank 0 and ``peer`` at the same time (no other rank takes part). Rank 0 gets
    the estimate; the peer gets it too (sent back). Host buffers only. ``clock``: this
    rank's clock (tests give each rank its own).

    NCCL's send and recv return once enqueued, before the data has gone or come: each is
    followed by ``synchronize()`` (a no-op on the CPU), and a time is read only after it,
    so t2 is when the reply is really here and the peer stamps after the ping arrived."""
    buf = backend.from_numpy(np.zeros(1, dtype=np.int64), "int64")
    if backend.rank == 0:
        t0, t1, t2 = (np.empty(rounds, dtype=np.int64) for _ in range(3))
        for i in range(rounds):
            t0[i] = clock()
            backend.send(buf, peer)
            backend.synchronize()
            backend.recv(buf, peer)
            backend.synchronize()
            t2[i] = clock()
            t1[i] = int(backend.to_numpy(buf)[0])
        est = offset_from_samples(t0, t1, t2)
        backend.send(backend.from_numpy(np.array([est.offset_ns, est.uncertainty_ns, est.t_ns],
                                                  dtype=np.int64), "int64"), peer)
        backend.synchronize()
        return est
    if backend.rank == peer:
        for _ in range(rounds):
            backend.recv(buf, 0)
            backend.synchronize()
            stamped = backend.from_numpy(np.array([clock()], dtype=np.int64), "int64")
            backend.send(stamped, 0)
            backend.synchronize()
        out = backend.from_numpy(np.zeros(3, dtype=np.int64), "int64")
        backend.recv(out, 0)
        backend.synchronize()
        offset, unc, t = (int(v) for v in backend.to_numpy(out))
        return ClockOffset(offset_ns=offset, uncertainty_ns=unc, t_ns=t)
    return None


def measure_offsets(backend: Any, hostnames: list[str], *, force: bool = False
                    ) -> ClockOffset:
    """This rank's offset to rank 0: exact 0 on rank 0's host (unless ``force``), else a
    ping-pong estimate. Every rank must call it (the peers are served in rank order)."""
    mine = same_host_offsets(hostnames)[backend.rank]
    for peer in range(1, backend.world_size):
        if force or hostnames[peer] != hostnames[0]:
            est = ping_pong(backend, peer)
            if backend.rank == peer:
                mine = est
    return mine


def combine(before: ClockOffset, after: ClockOffset) -> ClockOffset:
    """One offset for the whole run, for readers that use one number: the offset at the
    run's midpoint (the mean of the two estimates, at the mean of their times), with an
    uncertainty that also covers the drift between them. ``aligned`` does better: it
    interpolates in time."""
    if before.offset_ns is None or after.offset_ns is None:
        return before if after.offset_ns is None else after
    drift = abs(after.offset_ns - before.offset_ns)
    t = (None if before.t_ns is None or after.t_ns is None
         else (before.t_ns + after.t_ns) // 2)
    return replace(before, offset_ns=(before.offset_ns + after.offset_ns) // 2,
                   uncertainty_ns=max(before.uncertainty_ns or 0, after.uncertainty_ns or 0)
                   + (drift + 1) // 2, t_ns=t)


def clock_metadata(before: ClockOffset, after: ClockOffset) -> dict[str, int | None]:
    """The rank file's clock fields: the run's one-number offset (``combine``) and both
    estimates with their times, which ``aligned`` interpolates between."""
    one = combine(before, after)
    return {"clock_offset_ns": one.offset_ns, "clock_offset_uncertainty_ns": one.uncertainty_ns,
            "clock_offset_before_ns": before.offset_ns, "clock_offset_after_ns": after.offset_ns,
            "clock_offset_before_uncertainty_ns": before.uncertainty_ns,
            "clock_offset_after_uncertainty_ns": after.uncertainty_ns,
            "clock_offset_before_t_ns": before.t_ns, "clock_offset_after_t_ns": after.t_ns}


Clock = int | None | Mapping[str, Any]


def aligned(t_ns: Any, clock: Clock) -> np.ndarray | None:
    """Times ``t_ns`` of this rank's clock on rank 0's clock, int64; None where the offset
    is unknown. ``clock``: the rank file's metadata (``clock_metadata``), or one offset in
    ns (older callers), or None (unknown).

    With both estimates and their times, the offset is interpolated linearly in time,
    offset(t) = before + (after - before) (t - t_before) / (t_after - t_before), t on rank
    0's clock: a crystal's frequency error makes the offset drift linearly. Outside
    [t_before, t_after] it is held at the nearer estimate (clamped, not extrapolated):
    the records lie between the two estimates, which bracket the run, and extrapolating
    a slope fitted over the run would multiply the estimates' error with the distance.
    The error inside is at most the larger of the two uncertainties. A file with one
    number only (``clock_offset_ns``) gets that number everywhere."""
    t = np.asarray(t_ns, dtype=np.int64)
    if clock is None or isinstance(clock, (int, np.integer)):
        return None if clock is None else t + np.int64(clock)
    b, a = clock.get("clock_offset_before_ns"), clock.get("clock_offset_after_ns")
    tb, ta = clock.get("clock_offset_before_t_ns"), clock.get("clock_offset_after_t_ns")
    if None in (b, a, tb, ta) or ta <= tb:
        one = clock.get("clock_offset_ns")
        return None if one is None else t + np.int64(one)
    slope = (a - b) / (ta - tb)
    if not abs(slope) < 0.5:  # no clock drifts by half its rate: estimates that say so
        raise ValueError(f"clock_offset_after_ns: {a} implies a drift of {slope:.3g} "
                         f"from {b} between t={tb} and t={ta}")
    # t0 = t + offset(t0) solved for rank 0's time t0 (exact for a linear drift)
    since = (t + np.int64(b) - np.int64(tb)).astype(np.float64) / (1.0 - slope)
    frac = np.clip(since / (ta - tb), 0.0, 1.0)
    return t + np.int64(b) + np.rint((a - b) * frac).astype(np.int64)
