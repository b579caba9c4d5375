"""Mixture-of-experts routing, seeded: which experts each token goes to, and what that
makes each rank send and compute. Real ranks (``collectives.moe_decode``) and the
simulator (``MoELoad``) use the same draws.

Routing law. Each token picks ``top_k`` distinct experts out of ``experts``:

- ``uniform``: every k-subset equally likely;
- ``skewed``: Plackett-Luce sampling without replacement from Zipf popularities: the
  expert of popularity rank i (1-based) has weight i**-skew, and the token's experts are
  drawn one after another, each with probability proportional to its weight among those
  not yet drawn (done at once as the top k of log weight + Gumbel noise). Which expert
  holds which popularity rank is a seeded permutation per layer, fixed over steps (hot
  experts persist, as measured routers show). ``skew = 0`` is uniform.

Draws are keyed by (seed, step, layer) and made token by token in global token order
(token t lives on rank t // batch): the first tokens' choices are the same whatever the
world size, so curves over N are paired.

Experts sit on ranks in contiguous blocks: expert e on rank e // (experts / N).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .site_load import LoadDraw

_STREAM = 7_000_003  # routing's own streams, apart from the schedules'
EXACT_DRAWS = 1 << 18
"""Token x expert draws per routing above which the simulator reuses a pool of routings
(``MoELoad``): at N = 256 ranks of 32 tokens and 256 experts a routing is 2 M draws,
tens of milliseconds, too slow for every (step, layer)."""
POOL = 32
"""Routings the simulator draws per world size past ``EXACT_DRAWS``: (step, layer) uses
routing (step * layers + layer) mod POOL."""


@dataclass(frozen=True)
class Router:
    """Seeded top-k routing of ``experts`` experts (module docstring)."""

    experts: int
    top_k: int
    skew: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.top_k <= self.experts:
            raise ValueError(f"top_k: must be in 1 .. experts ({self.experts}), "
                             f"got {self.top_k}")
        if not (np.isfinite(self.skew) and self.skew >= 0):
            raise ValueError(f"routing_skew: must be a finite number >= 0, got {self.skew}")

    def log_weights(self, layer: int) -> np.ndarray:
        """(experts,) log popularity of each expert at ``layer`` (zeros when uniform)."""
        if self.skew == 0:
            return np.zeros(self.experts)
        rng = np.random.default_rng([self.seed, _STREAM + 1, layer])  # apart from choices
        ranks = rng.permutation(self.experts) + 1.0
        return -self.skew * np.log(ranks)

    def choices(self, step: int, layer: int, tokens: int) -> np.ndarray:
        """(tokens, top_k) expert of each token's choices, in global token order."""
        rng = np.random.default_rng([self.seed, _STREAM, step, layer])
        u = rng.random((tokens, self.experts))
        keys = self.log_weights(layer) - np.log(-np.log(np.maximum(u, 1e-300)))
        if self.top_k == self.experts:
            return np.argsort(-keys, axis=1)
        return np.argpartition(-keys, self.top_k - 1, axis=1)[:, :self.top_k]

    def counts(self, step: int, layer: int, n: int, batch: int) -> np.ndarray:
        """(n, experts) token copies rank r sends expert e: its ``batch`` tokens' choices."""
        return _counts(self, step, layer, n, batch)


@functools.lru_cache(maxsize=128)  # a study's routings of every layer at one N
def _counts(router: Router, step: int, layer: int, n: int, batch: int) -> np.ndarray:
    picks = router.choices(step, layer, n * batch)
    rank = np.repeat(np.arange(n), batch * router.top_k)
    out = np.zeros((n, router.experts), dtype=np.int64)
    np.add.at(out, (rank, picks.reshape(-1)), 1)
    out.flags.writeable = False
    return out


def rank_matrix(counts: np.ndarray, n: int) -> np.ndarray:
    """(n, n) token copies rank r sends rank q (experts in contiguous blocks per rank)."""
    return counts.reshape(n, n, -1).sum(axis=2)


@dataclass(frozen=True)
class ExpertCost:
    """The roofline of one rank's experts as one grouped GEMM: every expert that
    received a token reads its weights once; 2 FLOPs per weight per token."""

    params: float
    """Weights of one expert (gate, up and down projections: 3 x hidden x ffn)."""
    hbm_bytes_per_s: float
    peak_flops: float
    bytes_per_param: int = 2
    """bf16 weights."""

    def seconds(self, tokens_per_expert: np.ndarray, n: int) -> np.ndarray:
        """(n,) seconds per rank from each expert's tokens (experts, contiguous blocks)."""
        t = np.asarray(tokens_per_expert, dtype=np.float64).reshape(n, -1)
        read = (t > 0).sum(axis=1) * self.params * self.bytes_per_param
        return np.maximum(read / self.hbm_bytes_per_s,
                          2.0 * self.params * t.sum(axis=1) / self.peak_flops)


@dataclass(frozen=True)
class MoELoad:
    """The simulator's load of one MoE layer's dispatch (``phase = "dispatch"``: the
    bytes of each rank's token copies to each other rank, no extra compute) or combine
    (``"combine"``: the experts' compute on the tokens each rank received, then the
    copies sent back)."""

    router: Router
    layer: int
    layers: int
    batch: int
    token_bytes: int
    """Bytes of one token copy: hidden x dtype size."""
    phase: str
    cost: ExpertCost | None = None
    offset: int = 0
    """Routing step of simulated step 0 (the ranks' warm-up steps come first)."""

    @property
    def group(self) -> tuple:
        """Sites of one phase are exchangeable across layers (the same routing law, each
        layer its own seeded draws): a simulator may pool their draws."""
        return ("moe", self.phase, self.router, self.batch, self.token_bytes, self.cost)

    def draw(self, n: int, step: int) -> LoadDraw:
        step += self.offset
        key = step
        if n * self.batch * self.router.experts > EXACT_DRAWS:
            key, layer = divmod((step * self.layers + self.layer) % POOL, self.layers)
        else:
            layer = self.layer
        counts = self.router.counts(key, layer, n, self.batch)
        pairs = rank_matrix(counts, n).astype(np.float64) * self.token_bytes
        if self.phase == "dispatch":
            return LoadDraw(np.zeros(n), pairs)
        compute = (self.cost.seconds(counts.sum(axis=0), n) if self.cost is not None
                   else np.zeros(n))
        return LoadDraw(compute, pairs.T.copy())
