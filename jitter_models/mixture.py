"""The mixture family: with probability w_i, a draw from component i."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from scipy.special import logsumexp

from .bisection import _bad_q, smallest_true
from .protocol import Distribution, _arr, _hidden, _out, register
from .syntax import Param

_WEIGHT_TOLERANCE = 1e-9


@register
@dataclass(frozen=True, kw_only=True)
class Mixture(Distribution):
    """With probability w_i, a draw from component i (e.g. the spike model
    ``mixture(0.99*constant(5us), 0.01*constant(2ms))``)."""

    family: ClassVar[str] = "mixture"
    params: ClassVar[tuple[Param, ...]] = (Param("components", "components"),)
    components: tuple[tuple[float, Distribution], ...]
    """(weight, distribution) pairs; weights > 0 summing to 1."""
    _w: Any = _hidden()

    def __post_init__(self) -> None:
        comps = tuple((w, d) for w, d in self.components)
        if not comps:
            raise ValueError("mixture: components: needs at least one 'weight*dist'")
        for i, (w, d) in enumerate(comps):
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                raise ValueError(f"mixture: components[{i}].weight: expected a finite number, "
                                 f"got {w!r}")
            if w <= 0:
                raise ValueError(f"mixture: components[{i}].weight: must be > 0, got {w!r}")
            if not isinstance(d, Distribution):
                raise ValueError(f"mixture: components[{i}].dist: not a distribution: {d!r}")
        total = math.fsum(w for w, _ in comps)
        if abs(total - 1.0) > _WEIGHT_TOLERANCE:
            raise ValueError(f"mixture: weights must sum to 1, got {total!r}")
        object.__setattr__(self, "components", tuple((float(w), d) for w, d in comps))
        w = np.array([w for w, _ in comps])
        object.__setattr__(self, "_w", w / w.sum())

    @property
    def _dists(self) -> list[Distribution]:
        return [d for _, d in self.components]

    def _sum(self, method: str, x: Any) -> np.ndarray:
        x = _arr(x)
        total = np.zeros(x.shape)
        for w, d in zip(self._w, self._dists):
            total = total + w * _arr(getattr(d, method)(x))
        return np.clip(total, 0.0, 1.0)

    # Outside the support the answers are exact, whatever the weights' float sum is.
    def cdf(self, x: Any) -> Any:
        x = _arr(x)
        lo, hi = self.support()
        return _out(np.where(x >= hi, 1.0, np.where(x < lo, 0.0, self._sum("cdf", x))))

    def sf(self, x: Any) -> Any:
        x = _arr(x)
        lo, hi = self.support()
        return _out(np.where(x >= hi, 0.0, np.where(x < lo, 1.0, self._sum("sf", x))))

    def logsf(self, x: Any) -> Any:
        x = _arr(x)
        parts = [np.log(w) + _arr(d.logsf(x)) for w, d in zip(self._w, self._dists)]
        return _out(np.minimum(logsumexp(np.stack(parts), axis=0), 0.0))

    def _invert(self, method: str, q: Any, pred: Callable) -> Any:
        q = _arr(q)
        qq = np.where(_bad_q(q), 0.5, q)
        each = np.stack([_arr(getattr(d, method)(qq)) for d in self._dists])
        lo, hi = each.min(axis=0), each.max(axis=0)
        hi = np.where(pred(hi, qq), hi, np.inf)  # rounding in the weighted sum
        x = smallest_true(lambda v: pred(v, qq), lo, hi)
        return _out(np.where(_bad_q(q), np.nan, x))

    def ppf(self, q: Any) -> Any:
        return self._invert("ppf", q, lambda v, qq: _arr(self.cdf(v)) >= qq)

    def isf(self, q: Any) -> Any:
        return self._invert("isf", q, lambda v, qq: _arr(self.sf(v)) <= qq)

    def sample(self, rng: np.random.Generator, size: Any) -> np.ndarray:
        """Prefix-stable: the k-th value depends on the first k positions only (the choice
        and each component draw from streams of their own, every component at every
        position), so a longer draw repeats a shorter one's start, as a link's messages
        need across world sizes. Costs one draw per component and position."""
        n = int(np.prod(size))
        seeds = rng.integers(0, 2**63, len(self._dists) + 1)  # a fixed count: stable
        pick = np.random.default_rng(seeds[0]).random(n)
        which = np.minimum(np.searchsorted(np.cumsum(self._w), pick, side="right"),
                           len(self._w) - 1)
        out = np.empty(n)
        for j, d in enumerate(self._dists):
            mask = which == j
            if mask.any():
                out[mask] = d.sample(np.random.default_rng(seeds[j + 1]), n)[mask]
        return out.reshape(size)

    def sample_max(self, rng: np.random.Generator, n: np.ndarray) -> np.ndarray:
        # Split each n over the components (a multinomial, drawn as successive binomials),
        # then the max of the components' maxima: exact, and O(1) in n.
        left = np.asarray(n, dtype=np.int64).copy()
        # P(component j | not one of the earlier ones): weight over the weight still left.
        still = np.cumsum(self._w[::-1])[::-1]
        out = np.full(left.shape, -np.inf)
        for j, d in enumerate(self._dists):
            last = j == len(self._w) - 1
            count = left if last else rng.binomial(left, min(1.0, self._w[j] / still[j]))
            left = left - count
            has = count > 0
            if has.any():
                out[has] = np.maximum(out[has], d.sample_max(rng, count[has]))
        return out

    def mean(self) -> float:
        return float(sum(w * d.mean() for w, d in zip(self._w, self._dists)))

    def std(self) -> float:
        mu = self.mean()
        if math.isinf(mu):
            return math.inf
        var = sum(w * (d.std() ** 2 + (d.mean() - mu) ** 2)
                  for w, d in zip(self._w, self._dists))
        return float(math.sqrt(var))

    def support(self) -> tuple[float, float]:
        sup = [d.support() for d in self._dists]
        return min(s[0] for s in sup), max(s[1] for s in sup)

    def breakpoints(self) -> list[float]:
        return sorted({b for d in self._dists for b in d.breakpoints()})

    def landmarks(self) -> np.ndarray:
        return np.concatenate([d.landmarks() for d in self._dists])

    @property
    def is_discrete(self) -> bool:
        return all(d.is_discrete for d in self._dists)
