"""One site's collective in the simulator's rank-by-rank path: given each rank's time of
entering it, when each rank leaves it.

- ``native``: the backend's own call, modelled by the network (``Network.native_time``):
  every rank leaves when the last one entered plus that time.
- An explicit algorithm: its pattern (``jitter_models.algorithms.pattern``) executed as a
  vectorized recurrence (``pattern_sim.finish``) with the network's per-hop times and,
  for a link-scoped schedule, a hop delay per message. The delays come from each link's
  own stream exactly as real ranks draw them (``pattern_sim.link_delays_exact``: the k-th
  message on a link over the run gets the link's k-th draw) while they fit in memory, and
  otherwise in bulk from the link law (``pattern_sim.link_delays_bulk``: the same law,
  the temporal structure along a link dropped, drawn step by step as the recurrence goes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .algorithm_builders import has_pattern
from .network import Network
from .schedule import Schedule

MAX_LINK_DRAWS = 1 << 24  # exact per-link draws held at once (128 MiB of float64)


class LinkSource:
    """The hop delays of one pattern's successive calls in a run, shared by every site
    that runs that pattern (so that, as on real ranks, a link's k-th message over the run
    gets the link's k-th draw, whichever site sends it)."""

    def __init__(self, compiled: Any, schedule: Schedule, seed: int, rng: np.random.Generator,
                 *, exact: bool, calls: int):
        from . import pattern_sim

        self.sim, self.compiled, self.schedule, self.rng = pattern_sim, compiled, schedule, rng
        self.call = 0
        self.exact = None
        if exact and compiled.messages * calls <= MAX_LINK_DRAWS:
            self.exact = pattern_sim.link_delays_exact(schedule, seed, compiled, calls)

    def next(self) -> Any:
        """The next call's delays: per step, a list (exact) or an iterator (bulk)."""
        if self.exact is not None and self.call < self.exact[0].shape[0]:
            out = [d[self.call] for d in self.exact]
        else:
            out = self.sim.link_delays_bulk(self.schedule, self.rng, self.compiled)
        self.call += 1
        return out


class SiteCollective:
    """The collective of one site on ``n`` ranks; ``sources``: the run's LinkSources by
    pattern, shared between sites (created here as needed)."""

    def __init__(self, site: Any, n: int, network: Network, schedule: Schedule, seed: int,
                 rng: np.random.Generator, *, exact_links: bool, calls: int = 1,
                 sources: dict | None = None):
        from . import pattern_sim

        self.native = not has_pattern(site.algorithm) or n == 1
        self.collective, self.network, self.n = site.collective, network, n
        if self.native:
            self.duration_s = network.native_time(site.collective, n, site.message_bytes)
            return
        self.sim = pattern_sim
        self.compiled = pattern_sim.compile_algorithm(site.algorithm, site.collective, n,
                                                      network.ranks_per_node)
        self.hops = pattern_sim.hop_times(self.compiled, network, site.message_bytes)
        self.duration_s = float(np.max(pattern_sim.finish(self.compiled, np.zeros(n),
                                                          self.hops)))
        self.source = None
        if schedule.scope == "link":
            sources = {} if sources is None else sources
            key = (site.algorithm, site.collective)
            if key not in sources:
                sources[key] = LinkSource(self.compiled, schedule, seed, rng,
                                          exact=exact_links, calls=calls)
            self.source = sources[key]

    def run(self, arrive: Any, pair_bytes: np.ndarray | None = None) -> Any:
        """Each rank's time of leaving, from its time of entering (an array, or a scalar
        when every rank enters together). ``pair_bytes``: an all-to-all's (n, n) bytes
        from each rank to each other for this call (uneven splits), else the site's even
        size."""
        if pair_bytes is not None and self.collective != "all_to_all":
            raise ValueError(f"pair_bytes: only an all_to_all takes uneven splits, this "
                             f"site runs {self.collective}")
        if self.native:
            if pair_bytes is None or self.n == 1:
                return float(np.max(arrive)) + self.duration_s
            return float(np.max(arrive)) + self.network.all_to_all_v_time(pair_bytes)
        start = np.broadcast_to(np.asarray(arrive, dtype=np.float64),
                                (self.compiled.world_size,))
        hops = self.hops if pair_bytes is None else [
            self.network.hop_time(s.src, s.dst, pair_bytes[s.src, s.dst])
            for s in self.compiled.steps]
        delays = self.source.next() if self.source is not None else None
        return self.sim.finish(self.compiled, start, hops, delays)
