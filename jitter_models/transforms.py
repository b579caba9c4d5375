"""Families that transform one other distribution: shifted (``offset + X``) and clip
(``min(X, max)``), both with their atoms kept exact."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .bisection import smallest_true
from .protocol import Distribution, _arr, _out, register
from .syntax import Param


@register
@dataclass(frozen=True, kw_only=True)
class Shifted(Distribution):
    """``offset_s + X``: a fixed floor under a random delay. Values are the floating-point
    sums, and the CDF is that of the sums, so atoms stay exact."""

    family: ClassVar[str] = "shifted"
    params: ClassVar[tuple[Param, ...]] = (Param("offset", "duration"), Param("dist", "dist"))
    offset_s: float
    """The shift, seconds (>= 0)."""
    dist: Distribution
    """The distribution being shifted."""

    def __post_init__(self) -> None:
        self._check("offset_s", self.offset_s)
        if not isinstance(self.dist, Distribution):
            raise ValueError(f"shifted: dist: not a distribution: {self.dist!r}")

    def _preimage(self, x: Any) -> np.ndarray:
        """Largest y with fl(y + offset) <= x (-1 where none, inf at x = inf)."""
        x = _arr(x)
        o = self.offset_s
        xf = np.atleast_1d(np.where(np.isfinite(x), x, 0.0))
        y = xf - o
        # Usually x - offset is the answer; bisect (64 rounds) only where it is not.
        exact = (y >= 0) & (y + o <= xf) & (np.nextafter(y, np.inf) + o > xf)
        if not exact.all():
            rest = ~exact
            xr = xf[rest]
            z = smallest_true(lambda v: v + o > xr, 0.0, np.inf)
            y[rest] = np.where(z > 0, np.nextafter(z, -np.inf), -1.0)
        return np.where(np.isfinite(x), y.reshape(x.shape), x)  # +-inf, nan: themselves

    def cdf(self, x: Any) -> Any:
        return self.dist.cdf(self._preimage(x))

    def sf(self, x: Any) -> Any:
        return self.dist.sf(self._preimage(x))

    def logsf(self, x: Any) -> Any:
        return self.dist.logsf(self._preimage(x))

    def ppf(self, q: Any) -> Any:
        return _out(_arr(self.dist.ppf(q)) + self.offset_s)

    def isf(self, q: Any) -> Any:
        return _out(_arr(self.dist.isf(q)) + self.offset_s)

    def sample(self, rng: np.random.Generator, size: Any) -> np.ndarray:
        return self.dist.sample(rng, size) + self.offset_s

    def sample_max(self, rng: np.random.Generator, n: np.ndarray) -> np.ndarray:
        return self.dist.sample_max(rng, n) + self.offset_s

    def mean(self) -> float:
        return self.dist.mean() + self.offset_s

    def std(self) -> float:
        return self.dist.std()

    def support(self) -> tuple[float, float]:
        lo, hi = self.dist.support()
        return lo + self.offset_s, hi + self.offset_s

    def breakpoints(self) -> list[float]:
        return [b + self.offset_s for b in self.dist.breakpoints()]

    def landmarks(self) -> np.ndarray:
        return self.dist.landmarks() + self.offset_s

    @property
    def is_discrete(self) -> bool:
        return self.dist.is_discrete


@register
@dataclass(frozen=True, kw_only=True)
class Clip(Distribution):
    """``min(X, max)``: tames a heavy tail; the mass above ``max`` becomes an atom there."""

    family: ClassVar[str] = "clip"
    params: ClassVar[tuple[Param, ...]] = (Param("dist", "dist"), Param("max", "duration"))
    dist: Distribution
    """The distribution being clipped."""
    max_s: float
    """The ceiling, seconds (>= 0)."""
    _moments: Any = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.dist, Distribution):
            raise ValueError(f"clip: dist: not a distribution: {self.dist!r}")
        self._check("max_s", self.max_s)

    def cdf(self, x: Any) -> Any:
        x = _arr(x)
        return _out(np.where(x >= self.max_s, 1.0, _arr(self.dist.cdf(x))))

    def sf(self, x: Any) -> Any:
        x = _arr(x)
        return _out(np.where(x >= self.max_s, 0.0, _arr(self.dist.sf(x))))

    def logsf(self, x: Any) -> Any:
        x = _arr(x)
        return _out(np.where(x >= self.max_s, -np.inf, _arr(self.dist.logsf(x))))

    def _up_to_atom(self, x: np.ndarray, pred: Callable) -> np.ndarray:
        """A continuous base's quantile can land one float short of the atom at max while
        its own cdf says the level is reached only at max: move it there."""
        x = np.minimum(x, self.max_s)
        nxt = np.nextafter(x, np.inf)
        return np.where((nxt == self.max_s) & ~pred(x), self.max_s, x)

    def ppf(self, q: Any) -> Any:
        q = _arr(q)
        x = self._up_to_atom(_arr(self.dist.ppf(q)), lambda v: _arr(self.cdf(v)) >= q)
        return _out(x)

    def isf(self, q: Any) -> Any:
        q = _arr(q)
        x = self._up_to_atom(_arr(self.dist.isf(q)), lambda v: _arr(self.sf(v)) <= q)
        return _out(x)

    def sample(self, rng: np.random.Generator, size: Any) -> np.ndarray:
        return np.minimum(self.dist.sample(rng, size), self.max_s)

    def sample_max(self, rng: np.random.Generator, n: np.ndarray) -> np.ndarray:
        return np.minimum(self.dist.sample_max(rng, n), self.max_s)

    def _raw_moments(self) -> tuple[float, float]:
        # E[Y] and E[Y^2] of Y = min(X, max), with the knotted integrator of order_stats
        # (the max of one draw is the draw).
        if self._moments is None:
            from .order_stats import moment_of_max

            moments = (moment_of_max([(self, 1)], 1), moment_of_max([(self, 1)], 2))
            object.__setattr__(self, "_moments", moments)
        return self._moments

    def mean(self) -> float:
        return self._raw_moments()[0]

    def std(self) -> float:
        m1, m2 = self._raw_moments()
        return math.sqrt(max(m2 - m1 * m1, 0.0))

    def support(self) -> tuple[float, float]:
        lo, hi = self.dist.support()
        return min(lo, self.max_s), min(hi, self.max_s)

    def breakpoints(self) -> list[float]:
        return sorted({b for b in self.dist.breakpoints() if b < self.max_s} | {self.max_s})

    def landmarks(self) -> np.ndarray:
        x = self.dist.landmarks()
        return x[x < self.max_s]

    @property
    def is_discrete(self) -> bool:
        return self.dist.is_discrete
