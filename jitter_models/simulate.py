"""The simulator: the distribution of step latency for a workload's sites, a schedule and a
network, at any world size up to 2**20, in numpy.

A step is a sequence of sites; at each site every rank computes (``compute_s``), waits its
injected delay, then enters the site's collective. Time is one axis for the whole run
(detours depend on it): it starts at the point's first barrier, and each step starts when
the previous one ended on its slowest rank (the step's barrier is taken as free).

How a point is simulated (``method`` in the results):

- ``max-sampling`` (exact in law, cost independent of N): native collectives, a schedule
  with iid delays and no detours. A site costs compute + the max over the site's
  independent streams (``Schedule.site_groups``: ranks, nodes, or one global stream, and
  the stragglers' group) drawn directly by ``sample_max``, + the network's model of the
  native call (``Network.native_time``).
- ``rank-by-rank`` (exact: every rank has its own delays and detour phase, from the same
  streams real ranks use: ``Schedule.delays``, ``Detours.offsets``): temporal structure or
  detours, up to ``cutoff`` ranks and ``MAX_RANK_DRAWS`` delay draws; and every explicit
  algorithm (each rank's entry time feeds the pattern's recurrence,
  ``pattern_sim.finish``), whose per-rank delays past the cutoff are drawn in bulk from
  the marginal law (temporal structure across a rank's sites dropped).
- ``marginal`` (an approximation, past the cutoff, native collectives only): each site's
  maximum is drawn from its exact marginal law, independently across sites. Temporal
  structure: the marginal of the max is ``sample_max`` of the marginal groups. Detours with
  aligned phase: every rank is at the same position, and the time a site's work ends is
  non-decreasing in the work, so the slowest rank is the one with the largest delay: the
  site ends at ``end(t, compute + max delay)``, which keeps the time axis exactly. Random
  phase: one rank's lag at a site (end - start) has a law that does not depend on t (its
  position is uniform); its survival function is computed from the delay law's own sf
  on a grid of phases (``_lag_max``), so the max of N keeps the delay law's exact tail;
  with a constant delay the lag's law is exact whatever the number of detours
  (``Detours.lag_survival``: a measured trace has thousands a period, which the grid
  cannot resolve; a random delay with more than PHASES / 16 detours a period is refused).
  What is lost is the dependence between a rank's successive sites (a rank inside a long
  detour at one site is likely inside it at the next). Its error at the cutoff against
  the rank-by-rank result is measured in tests/test_simulate.py. Node- or global-scoped
  delays with random-phase detours are refused past the cutoff (no approximation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .algorithm_builders import LINEAR_DEPTH, has_pattern
from .detour_lag import max_of_lags
from .detours import Detours
from .layout import node_of
from .network import Network
from .order_stats import sample_max
from .parametric import Constant
from .schedule import Schedule
from .temporal import IID

MAX_WORLD_SIZE = 1 << 20
MAX_RING_WORLD_SIZE = 1 << 16
MAX_RANK_DRAWS = 1 << 25  # per-rank delay draws held at once (256 MiB of float64)
DEFAULT_CUTOFF = 16384
PHASES = 2048  # phase grid of the random-phase detour lag law (past the cutoff)
DENSE_PHASES = 16  # the grid needs this many phases a detour (else refused, or exact)
LAG_GRID = 2048
_SIM_STREAM = 1_000_003  # the simulator's own bulk draws, apart from every rank's stream


@dataclass(frozen=True)
class Site:
    """One site of a step, as the simulator sees it."""

    compute_s: float
    message_bytes: int
    collective: str = "all_reduce"
    algorithm: str = "native"
    overlap: bool = False
    """The site's compute overlaps the previous site's collective (a DDP bucket: the
    backward pass goes on while the previous bucket's gradients are reduced): on each rank
    it starts when the previous site's compute and delay ended, and its collective starts
    when both that compute and the previous collective are done on the rank. False: the
    compute starts when the previous collective is done."""
    load: Any = None
    """A ``site_load.SiteLoad``: per step, each rank's own extra compute and the bytes
    each pair of ranks exchanges (uneven work, e.g. mixture-of-experts routing); None:
    every rank and every step the same."""


@dataclass
class StepSamples:
    """One simulated point: per step, its latency and its parts (seconds)."""

    latency_s: np.ndarray
    compute_s: np.ndarray
    comm_s: np.ndarray
    method: str
    wait_s: np.ndarray = field(init=False)
    """Waiting for the slowest: latency - compute - communication (delays, detours, and
    the skew they cause)."""

    def __post_init__(self) -> None:
        self.wait_s = self.latency_s - self.compute_s - self.comm_s


def check_world_size(world_size: int, sites: tuple[Site, ...]) -> int:
    """``world_size`` if the simulator takes it for these sites, else ValueError."""
    limit = MAX_RING_WORLD_SIZE if any(s.algorithm in LINEAR_DEPTH
                                       for s in sites) else MAX_WORLD_SIZE
    if isinstance(world_size, bool) or not isinstance(world_size, (int, np.integer)) \
            or not 1 <= world_size <= limit:
        raise ValueError(f"world_sizes: the simulator takes 1 .. {limit} ranks for these "
                         f"algorithms, got {world_size!r}")
    return int(world_size)


def simulate(schedule: Schedule | None, world_size: int, sites: tuple[Site, ...], *,
             network: Network, steps: int, seed: int, cutoff: int = DEFAULT_CUTOFF,
             rank_by_rank: bool = False) -> StepSamples:
    """``steps`` simulated steps of ``sites`` on ``world_size`` ranks (module docstring).
    ``rank_by_rank``: simulate every rank even where max sampling is exact (to check one
    against the other; it must fit ``MAX_RANK_DRAWS``)."""
    n = check_world_size(world_size, sites)
    if steps < 1 or not sites:
        raise ValueError(f"steps and sites: need at least one each, got {steps}, {len(sites)}")
    schedule = schedule if schedule is not None else Schedule(dist=Constant(value_s=0.0))
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SIM_STREAM, n]))
    explicit = any(has_pattern(s.algorithm) for s in sites)
    per_rank = any(s.overlap or s.load is not None for s in sites)
    if schedule.scope == "link" and not explicit:
        raise ValueError(f"jitter {schedule.name!r}: scope = 'link' needs an explicit "
                         "algorithm (its delays act on the messages)")
    detours = schedule.detours
    structured = detours is not None or not isinstance(schedule.temporal, IID)
    fits = n <= cutoff and n * steps * len(sites) <= MAX_RANK_DRAWS
    if explicit or per_rank:  # per-rank times: max sampling does not apply
        return _ranks(schedule, n, sites, network, steps, seed, rng, exact=fits)
    if rank_by_rank:
        if not fits:
            raise ValueError(f"rank_by_rank: {n} ranks x {steps} steps x {len(sites)} sites "
                             f"is over the limit of {MAX_RANK_DRAWS} delay draws")
        return _ranks(schedule, n, sites, network, steps, seed, rng, exact=True)
    if not structured:
        return _max_sampling(schedule, n, sites, network, steps, seed, rng)
    if fits or _constant(schedule) and n <= cutoff:
        return _ranks(schedule, n, sites, network, steps, seed, rng, exact=True)
    if detours is not None and detours.phase == "random" and schedule.scope != "rank":
        raise ValueError(f"jitter {schedule.name!r}: random-phase detours with scope = "
                         f"{schedule.scope!r} past the rank-by-rank cutoff ({cutoff} ranks, "
                         f"{MAX_RANK_DRAWS} delay draws) have no approximation here (shared "
                         "delays, per-rank phases); raise the cutoff or use scope = 'rank'")
    if (detours is not None and detours.phase == "random" and not _fixed_delays(schedule)
            and detours.count > PHASES // DENSE_PHASES):
        raise ValueError(f"jitter {schedule.name!r}: {detours.count} random-phase "
                         f"detours a period with a random delay past the rank-by-rank limits "
                         f"({cutoff} ranks, {MAX_RANK_DRAWS} delay draws): the "
                         f"approximation's grid of {PHASES} phases "
                         f"resolves at most {PHASES // DENSE_PHASES} detours a period (its "
                         "lag law is exact only for a constant delay); raise the cutoff, or "
                         "use a constant delay with these detours")
    return _marginal(schedule, n, sites, network, steps, seed, rng)


def _fixed_delays(schedule: Schedule) -> bool:
    """Every rank's delay is one constant (a law of one value), stragglers' too."""
    laws = [schedule.temporal.marginal(schedule.dist)]
    if schedule.stragglers is not None:
        laws.append(schedule.temporal.marginal(schedule.stragglers.dist))
    return all(_is_point(d) for d in laws)


def _is_point(d: Any) -> bool:
    """A law of one value (a constant, however it is written)."""
    lo, hi = d.support()
    return lo == hi


def _constant(schedule: Schedule) -> bool:
    return isinstance(schedule.dist, Constant) and schedule.stragglers is None


def _native_times(sites: tuple[Site, ...], network: Network, n: int) -> np.ndarray:
    return np.array([network.native_time(s.collective, n, s.message_bytes) for s in sites])


def _max_sampling(schedule: Schedule, n: int, sites: tuple[Site, ...], network: Network,
                  steps: int, seed: int, rng: np.random.Generator) -> StepSamples:
    compute = np.array([s.compute_s for s in sites])
    comm = _native_times(sites, network, n)
    delay = _site_max(schedule, n, seed, network.ranks_per_node, rng, (steps, len(sites)))
    latency = (compute + comm + delay).sum(axis=1)
    return StepSamples(latency, np.full(steps, compute.sum()), np.full(steps, comm.sum()),
                       "max-sampling")


def _site_max(schedule: Schedule, n: int, seed: int, ranks_per_node: int,
              rng: np.random.Generator, size: tuple[int, ...]) -> np.ndarray:
    groups = schedule.site_groups(seed, n, ranks_per_node)
    if not groups:
        return np.zeros(size)
    return sample_max(groups, rng, size)


class _RankDelays:
    """Each rank's delay at each (step, site): its own stream (exact) or bulk draws from
    the marginal law, produced step by step."""

    def __init__(self, schedule: Schedule, n: int, steps: int, n_sites: int, seed: int,
                 ranks_per_node: int, rng: np.random.Generator, exact: bool):
        self.n, self.n_sites, self.rng = n, n_sites, rng
        self.zero = schedule.scope == "link"
        self.constant = (_constant(schedule) and isinstance(schedule.temporal, IID)
                         and not self.zero)
        self.table: np.ndarray | None = None
        self.value = schedule.dist.value_s if self.constant else 0.0
        if self.zero or self.constant:  # no table: O(N) memory whatever the steps
            return
        if exact:
            self.table = np.stack([schedule.delays(seed, r, node_of(r, ranks_per_node), n,
                                                   steps, n_sites) for r in range(n)])
            return
        chosen = (schedule.stragglers.chosen(seed, n) if schedule.stragglers is not None
                  else frozenset())
        self.slow = np.array(sorted(chosen), dtype=np.int64)
        self.base = schedule.temporal.marginal(schedule.dist)
        self.other = (schedule.temporal.marginal(schedule.stragglers.dist)
                      if chosen else None)
        self.scope, self.rpn = schedule.scope, ranks_per_node

    def step(self, k: int) -> np.ndarray:
        """(n, n_sites) delays of step k."""
        if self.zero:
            return np.zeros((self.n, self.n_sites))
        if self.constant:
            return np.full((self.n, self.n_sites), self.value)
        if self.table is not None:
            return self.table[:, k, :]
        if self.scope == "global":
            out = np.broadcast_to(self.base.sample(self.rng, (1, self.n_sites)),
                                  (self.n, self.n_sites)).copy()
        elif self.scope == "node":
            nodes = node_of(self.n - 1, self.rpn) + 1
            per = self.base.sample(self.rng, (nodes, self.n_sites))
            out = per[np.arange(self.n) // self.rpn]
        else:
            out = self.base.sample(self.rng, (self.n, self.n_sites))
        if self.other is not None:
            out[self.slow] = self.other.sample(self.rng, (self.slow.size, self.n_sites))
        return out


def _ranks(schedule: Schedule, n: int, sites: tuple[Site, ...], network: Network,
           steps: int, seed: int, rng: np.random.Generator, *, exact: bool) -> StepSamples:
    """Every rank's time, site by site (module docstring: rank-by-rank)."""
    from .collective_sim import SiteCollective

    detours = schedule.detours
    offsets = (_offsets(detours, seed, n, rng, exact) if detours is not None else None)
    delays = _RankDelays(schedule, n, steps, len(sites), seed, network.ranks_per_node, rng,
                         exact)
    sources: dict = {}
    uses = {}
    for s in sites:
        uses[s.algorithm, s.collective] = uses.get((s.algorithm, s.collective), 0) + 1
    colls = [SiteCollective(s, n, network, schedule, seed, rng, exact_links=exact,
                            calls=steps * uses[s.algorithm, s.collective], sources=sources)
             for s in sites]
    compute = np.array([s.compute_s for s in sites])
    comm = np.array([c.duration_s for c in colls])
    latency = np.empty(steps)
    mean_compute, mean_comm = np.full(steps, compute.sum()), np.full(steps, comm.sum())
    t0 = 0.0
    for k in range(steps):
        d = delays.step(k)
        t: Any = t0  # each rank's end of its last collective
        ready: Any = t0  # each rank's end of its last compute and delay
        for j, (site, coll) in enumerate(zip(sites, colls)):
            work = compute[j] + d[:, j]
            draw = site.load.draw(n, k) if site.load is not None else None
            if draw is not None:
                work = work + draw.compute_s
                mean_compute[k] += float(np.mean(draw.compute_s))
            begin = ready if site.overlap else t
            ready = begin + work if detours is None else detours.end(begin, work, offsets)
            arrive = np.maximum(ready, t) if site.overlap else ready
            t = coll.run(arrive, None if draw is None else draw.bytes)
        end = max(float(np.max(t)), float(np.max(ready)))
        latency[k], t0 = end - t0, end
    return StepSamples(latency, mean_compute, mean_comm,
                       "rank-by-rank" if exact else "rank-by-rank (bulk delays)")


def _offsets(detours: Detours, seed: int, n: int, rng: np.random.Generator,
             exact: bool) -> np.ndarray:
    if detours.phase == "aligned":
        return np.zeros(n)
    if exact:
        return detours.offsets(seed, np.arange(n))
    return detours.random_offsets(rng, n)


def _marginal(schedule: Schedule, n: int, sites: tuple[Site, ...], network: Network,
              steps: int, seed: int, rng: np.random.Generator) -> StepSamples:
    """Past the cutoff, native collectives: each site's max from its marginal law."""
    compute = np.array([s.compute_s for s in sites])
    comm = _native_times(sites, network, n)
    rpn = network.ranks_per_node
    detours = schedule.detours
    if detours is None:
        delay = _site_max(schedule, n, seed, rpn, rng, (steps, len(sites)))
        latency = (compute + comm + delay).sum(axis=1)
        return StepSamples(latency, np.full(steps, compute.sum()),
                           np.full(steps, comm.sum()), "marginal")
    if detours.phase == "aligned":
        delay = _site_max(schedule, n, seed, rpn, rng, (steps, len(sites)))
        latency, t0 = np.empty(steps), 0.0
        for k in range(steps):
            t = t0
            for j in range(len(sites)):
                t = float(detours.end(t, compute[j] + delay[k, j], 0.0)) + comm[j]
            latency[k], t0 = t - t0, t
        return StepSamples(latency, np.full(steps, compute.sum()),
                           np.full(steps, comm.sum()), "marginal (aligned detours)")
    lag = np.stack([_lag_max(schedule, n, seed, c, rng, steps) for c in compute], axis=1)
    latency = (lag + comm).sum(axis=1)
    return StepSamples(latency, np.full(steps, compute.sum()), np.full(steps, comm.sum()),
                       "marginal (random-phase detours)")


def _lag_max(schedule: Schedule, n: int, seed: int, compute_s: float,
             rng: np.random.Generator, size: int) -> np.ndarray:
    """``size`` draws of the max over ``n`` ranks of one rank's lag (end - start) at a site
    of ``compute_s``, random-phase detours, each rank its own delay stream.

    A rank at position x is done within l exactly when its work fits in the time outside
    detours, ``free_time(x, l)``: P(lag > l) = mean over x of sf_delay(free_time(x, l) -
    compute), x on ``PHASES`` stratified midpoints (free_time is piecewise linear in x),
    computed on a grid of l and for each group of ranks with one law (ordinary ranks,
    stragglers). The max of N is drawn by solving sum_g n_g log(1 - P_g(lag > l)) =
    log U, interpolated on the grid in log scale: the tail is exact, not capped by a
    finite sample."""
    detours = schedule.detours
    chosen = (len(schedule.stragglers.chosen(seed, n)) if schedule.stragglers is not None
              else 0)
    groups = [(schedule.temporal.marginal(schedule.dist), n - chosen)]
    if chosen:
        groups.append((schedule.temporal.marginal(schedule.stragglers.dist), chosen))
    groups = [(d, c) for d, c in groups if c > 0]
    if all(_is_point(d) for d, _ in groups):
        return max_of_lags(detours, [(compute_s + float(d.support()[0]), c)
                                     for d, c in groups], rng, size)
    phase = ((np.arange(PHASES) + 0.5) / PHASES * detours.period_s)[:, None]
    tiny = 1e-12 / n
    top = max(float(d.isf(tiny)) for d, _ in groups)
    hi = (compute_s + top) / max(1.0 - detours.busy_fraction, 1e-9) + detours.period_s
    grid = compute_s + (hi - compute_s) * np.linspace(0.0, 1.0, LAG_GRID) ** 2
    log_all = np.zeros(LAG_GRID)  # sum_g n_g log P_g(lag <= l)
    for dist, count in groups:
        free = detours.free_time(phase, grid[None, :])
        sf = np.mean(np.asarray(dist.sf(free - compute_s), dtype=np.float64), axis=0)
        with np.errstate(divide="ignore"):  # sf = 1 below the smallest lag: log 0
            log_all += count * np.log1p(-np.minimum(sf, 1.0))
    # -log P(max <= l): decreasing in l from +inf to ~0
    h = np.maximum(-log_all, 1e-300)
    target = -np.log(rng.random(size))
    order = np.argsort(h)  # increasing h = decreasing l
    return np.interp(np.log(target), np.log(h[order]), grid[order])
