"""Paired networks: one collective's duration on several networks from the same draws,
and steps built from those durations (the bandwidth-vs-predictability study).

A ``PairedNetwork`` has two tiers (``intra``: ranks on one node; ``inter``: the rest),
each a bandwidth and a per-hop latency law (``hop_laws.HopLaw``): a message of b bytes on
a tier takes latency + b / bandwidth, the latency drawn per message. Every network gets
the same standard draws (Z, V) per message (common random numbers): the networks of one
call differ only by their laws and bandwidths, message by message.

``call_times`` runs an explicit algorithm's pattern (``pattern_sim.advance``, the
simulator's recurrence, all networks and samples at once on a (ranks, networks, samples)
clock) from a synchronized start and returns when the last rank finished. ``steps`` builds
step latencies from a workload's sites (``simulate.Site``), with one approximation, stated
where it is used: each site's collective starts when its slowest rank is ready (a barrier
before every collective, so no skew carries from one collective to the next) and takes a
duration drawn from a pool of ``call_times`` samples of that collective; ``full_steps`` is
the reference without it (every rank's clock carried through every site, fresh draws per
call), affordable at small N, that the approximation is checked against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import pattern_sim
from .hop_laws import HopLaw


@dataclass(frozen=True)
class PairedTier:
    bandwidth_Bps: float
    latency: HopLaw


@dataclass(frozen=True)
class PairedNetwork:
    name: str
    intra: PairedTier
    inter: PairedTier
    ranks_per_node: int


def _hops(step: Any, nets: Sequence[PairedNetwork], nbytes: np.ndarray, z: np.ndarray,
          v: np.ndarray) -> np.ndarray:
    """(messages, networks, samples) hop times of one pattern step. A tier that several
    networks share (the NVLink tier of every network) is computed once."""
    k = nets[0].ranks_per_node
    cross = (step.src // k) != (step.dst // k)
    out = np.empty((step.src.size, len(nets)) + z.shape[1:])
    every = cross.all() or not cross.any()  # (most steps: no mask to apply)
    b = nbytes if nbytes.ndim == z.ndim else nbytes.reshape(nbytes.shape + (1,) * (z.ndim - 1))
    for mask, which in ((cross, "inter"), (~cross, "intra")):
        if not mask.any():
            continue
        done: dict[PairedTier, int] = {}
        for c, net in enumerate(nets):
            tier = getattr(net, which)
            if tier in done:
                if every:
                    out[:, c] = out[:, done[tier]]
                else:
                    out[mask, c] = out[mask, done[tier]]
                continue
            done[tier] = c
            if every:
                out[:, c] = tier.latency.sample(z, v) + b / tier.bandwidth_Bps
            else:
                out[mask, c] = (tier.latency.sample(z[mask], v[mask])
                                + b[mask] / tier.bandwidth_Bps)
    return out


def call_times(compiled: Any, nets: Sequence[PairedNetwork], rng: np.random.Generator,
               samples: int, nbytes: float = 0.0, pair_bytes: np.ndarray | None = None
               ) -> np.ndarray:
    """(networks, samples) seconds of one call of ``compiled`` from a synchronized start
    to its last rank's finish; messages of ``nbytes`` x their share of the buffer, or
    ``pair_bytes[src, dst]`` (an uneven all-to-all)."""
    n = compiled.world_size
    clock = np.zeros((n, len(nets), samples))
    for s in compiled.steps:
        z = rng.standard_normal((s.src.size, samples))
        v = rng.random((s.src.size, samples))
        if pair_bytes is None:
            b = nbytes * s.frac
        elif pair_bytes.ndim == 3:  # one routing per sample: (samples, n, n)
            b = pair_bytes[:, s.src, s.dst].T
        else:
            b = pair_bytes[s.src, s.dst]
        clock = pattern_sim.advance(clock, s, _hops(s, nets, np.asarray(b, float), z, v),
                                    inplace=True)
    return clock.max(axis=0) if n > 1 else np.zeros((len(nets), samples))


@dataclass(frozen=True)
class SiteCall:
    """What a site's collective is: the compiled pattern (and its name: algorithm,
    collective), its bytes (even, or a routing's per-pair bytes)."""

    compiled: Any
    name: tuple
    nbytes: float
    pair_bytes: np.ndarray | None = None


@dataclass(frozen=True)
class SiteCalls:
    """A site's collective and each rank's compute before it ((n,) seconds: the site's
    compute plus its load), one entry per distinct step (``own``: step k uses entry k mod
    their number), and the ``group`` of sites whose entries are exchangeable (the sites of
    one MoE phase across layers: the same routing law), whose entries (``pool``) fill one
    pool of durations."""

    own: list[tuple[SiteCall, np.ndarray]]
    group: tuple
    pool: list[tuple[SiteCall, np.ndarray]]
    varies: bool = False
    """The compute differs between the pool's entries (a load): each pool sample carries
    its own compute peak; otherwise the site's own compute is taken (and the group need
    not share it)."""


Calls = Callable[[int], SiteCalls]


def _pool(entries: list[tuple[SiteCall, np.ndarray]], nets: Sequence[PairedNetwork],
          rng: np.random.Generator, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """(networks, samples) durations and (samples,) compute peaks: sample i from entry i
    mod the entries (each sample's routing with its own compute)."""
    call = entries[0][0]
    pick = np.arange(samples) % len(entries)
    peaks = np.array([float(np.max(c)) for _, c in entries])[pick]
    pair = None
    if call.pair_bytes is not None:
        pair = np.stack([e[0].pair_bytes for e in entries])[pick]
    return call_times(call.compiled, nets, rng, samples, call.nbytes, pair), peaks


def steps(sites: Sequence[Any], calls: Calls, nets: Sequence[PairedNetwork],
          rng: np.random.Generator, n_steps: int, samples: int,
          pools: dict | None = None) -> np.ndarray:
    """(networks, n_steps) step latencies (s), the barrier approximation (module
    docstring): one pool of ``samples`` (duration, compute peak) pairs per group of
    sites; each (step, site) picks one pool entry, the same for every network.
    ``pools``: a cache to share between calls with the same networks."""
    pools = {} if pools is None else pools
    t = np.zeros((len(nets), n_steps))  # end of the last collective
    r = np.zeros((len(nets), n_steps))  # end of the last compute
    for j, site in enumerate(sites):
        sc = calls(j)
        if sc.group not in pools:
            pools[sc.group] = _pool(sc.pool, nets, rng, samples)
        dur, peaks = pools[sc.group]
        i = rng.integers(dur.shape[1], size=n_steps)
        peak = peaks[i] if sc.varies else float(np.max(sc.own[0][1]))
        begin = r if site.overlap else t
        r = begin + peak
        t = (np.maximum(r, t) if site.overlap else r) + dur[:, i]
    return np.maximum(t, r)


def full_steps(sites: Sequence[Any], calls: Calls, nets: Sequence[PairedNetwork],
               rng: np.random.Generator, n_steps: int) -> np.ndarray:
    """(networks, n_steps) step latencies with every rank's clock carried through every
    site and fresh draws for every call: the reference for ``steps``. Every step starts
    with its ranks level (the end of the step before), so a step's latency does not depend
    on when it starts and the steps run side by side, one sample axis: step k uses entry
    k mod its site's entries, as one step after the other would."""
    entries = [calls(j).own for j in range(len(sites))]
    n = entries[0][0][0].compiled.world_size
    ks = np.arange(n_steps)
    t = np.zeros((n, len(nets), n_steps))  # every rank's clock, per network and step
    r = t.copy()
    for site, site_entries in zip(sites, entries):
        which = ks % len(site_entries)  # each step's entry
        computes = np.stack([np.broadcast_to(np.asarray(c, dtype=float), (n,))
                             for _, c in site_entries])[which]  # (n_steps, n)
        begin = r if site.overlap else t
        r = begin + computes.T[:, None, :]
        t = np.maximum(r, t) if site.overlap else r.copy()  # (advanced in place)
        if n > 1:
            t = _calls_side_by_side(t, [e for e, _ in site_entries], which, nets, rng)
    return np.maximum(t.max(axis=0), r.max(axis=0))


def _calls_side_by_side(t: np.ndarray, calls: list[SiteCall], which: np.ndarray,
                        nets: Sequence[PairedNetwork], rng: np.random.Generator
                        ) -> np.ndarray:
    """The clocks ``t`` (ranks, networks, steps) after each step's call (step k: entry
    ``which[k]``). Entries with the same pattern and bytes (per-pair bytes or not) run
    together, their steps side by side; others apart."""
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(calls):
        groups.setdefault((id(c.compiled), c.nbytes, c.pair_bytes is None), []).append(i)
    for members in groups.values():
        mask = np.isin(which, members)
        if mask.all():
            t = _run_call(t, calls, which, nets, rng)
        elif mask.any():
            t[:, :, mask] = _run_call(t[:, :, mask], calls, which[mask], nets, rng)
    return t


def _run_call(t: np.ndarray, calls: list[SiteCall], which: np.ndarray,
              nets: Sequence[PairedNetwork], rng: np.random.Generator) -> np.ndarray:
    call = calls[int(which[0])]
    m = which.size
    pair = (None if call.pair_bytes is None
            else np.stack([calls[int(i)].pair_bytes for i in which]))
    for s in call.compiled.steps:
        z, v = rng.standard_normal((s.src.size, m)), rng.random((s.src.size, m))
        b = call.nbytes * s.frac if pair is None else pair[:, s.src, s.dst].T
        t = pattern_sim.advance(t, s, _hops(s, nets, np.asarray(b, float), z, v),
                                inplace=True)
    return t
