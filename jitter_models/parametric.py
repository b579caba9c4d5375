"""The parametric families: constant, uniform, lognormal, exponential, gamma, weibull,
pareto (the continuous ones backed by exact scipy.stats laws)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from scipy import stats

from .protocol import Distribution, _arr, _hidden, _out, register
from .syntax import Param


class ScipyDistribution(Distribution):
    """A continuous family backed by an exact scipy.stats frozen distribution."""

    _rv: Any

    def _freeze(self, rv: Any) -> None:
        object.__setattr__(self, "_rv", rv)

    def cdf(self, x: Any) -> Any:
        return self._rv.cdf(x)

    def sf(self, x: Any) -> Any:
        return self._rv.sf(x)

    def logsf(self, x: Any) -> Any:
        return self._rv.logsf(x)

    def ppf(self, q: Any) -> Any:
        return self._rv.ppf(q)

    def isf(self, q: Any) -> Any:
        return self._rv.isf(q)

    def mean(self) -> float:
        return float(self._rv.mean())

    def std(self) -> float:
        return float(self._rv.std())

    def support(self) -> tuple[float, float]:
        lo, hi = self._rv.support()
        return float(lo), float(hi)


@register
@dataclass(frozen=True, kw_only=True)
class Constant(Distribution):
    """Always ``value_s`` seconds (an atom of mass 1)."""

    family: ClassVar[str] = "constant"
    params: ClassVar[tuple[Param, ...]] = (Param("value", "duration"),)
    value_s: float
    """The delay, seconds (>= 0)."""

    def __post_init__(self) -> None:
        self._check("value_s", self.value_s)

    def cdf(self, x: Any) -> Any:
        return _out((_arr(x) >= self.value_s).astype(np.float64))

    def sf(self, x: Any) -> Any:
        return _out((_arr(x) < self.value_s).astype(np.float64))

    def ppf(self, q: Any) -> Any:
        q = _arr(q)
        return _out(np.where((q >= 0) & (q <= 1), self.value_s, np.nan))

    isf = ppf

    def sample(self, rng: np.random.Generator, size: Any) -> np.ndarray:
        return np.full(size, self.value_s)

    def sample_max(self, rng: np.random.Generator, n: np.ndarray) -> np.ndarray:
        return np.full(np.shape(n), self.value_s)

    def mean(self) -> float:
        return self.value_s

    def std(self) -> float:
        return 0.0

    def support(self) -> tuple[float, float]:
        return self.value_s, self.value_s

    @property
    def is_discrete(self) -> bool:
        return True


@register
@dataclass(frozen=True, kw_only=True)
class Uniform(ScipyDistribution):
    """Uniform on [low, high]."""

    family: ClassVar[str] = "uniform"
    params: ClassVar[tuple[Param, ...]] = (Param("low", "duration"), Param("high", "duration"))
    low_s: float
    """Lower end, seconds (>= 0)."""
    high_s: float
    """Upper end, seconds (> low)."""
    _rv: Any = _hidden()

    def __post_init__(self) -> None:
        low, high = self._check("low_s", self.low_s), self._check("high_s", self.high_s)
        if high <= low:
            raise ValueError(f"uniform: high: must be > low ({low!r}), got {high!r}")
        self._freeze(stats.uniform(loc=low, scale=high - low))

    def sample(self, rng: np.random.Generator, size: Any) -> np.ndarray:
        return rng.uniform(self.low_s, self.high_s, size)


@register
@dataclass(frozen=True, kw_only=True)
class Lognormal(ScipyDistribution):
    """exp(N(log median, sigma^2))."""

    family: ClassVar[str] = "lognormal"
    params: ClassVar[tuple[Param, ...]] = (Param("median", "duration"), Param("sigma", "number"))
    median_s: float
    """Median, seconds (> 0)."""
    sigma: float
    """Standard deviation of log X (> 0)."""
    _rv: Any = _hidden()

    def __post_init__(self) -> None:
        m = self._check("median_s", self.median_s, positive=True)
        s = self._check("sigma", self.sigma, positive=True)
        self._freeze(stats.lognorm(s=s, scale=m))

    def sample(self, rng: np.random.Generator, size: Any) -> np.ndarray:
        # rng.lognormal's numbers (the same normals, scaled, shifted and exponentiated; bit
        # for bit where numpy's exp and C's agree, as on AVX2), in place: half the time at
        # 10^7 draws, most of it page faults.
        z = rng.standard_normal(size)
        if np.ndim(z) == 0:
            return np.exp(math.log(self.median_s) + self.sigma * z)
        z *= self.sigma
        z += math.log(self.median_s)
        return np.exp(z, out=z)


@register
@dataclass(frozen=True, kw_only=True)
class Exponential(ScipyDistribution):
    """Exponential with mean ``mean_s`` (rate 1/mean)."""

    family: ClassVar[str] = "exponential"
    params: ClassVar[tuple[Param, ...]] = (Param("mean", "duration"),)
    mean_s: float
    """Mean, seconds (> 0)."""
    _rv: Any = _hidden()

    def __post_init__(self) -> None:
        self._freeze(stats.expon(scale=self._check("mean_s", self.mean_s, positive=True)))

    def sample(self, rng: np.random.Generator, size: Any) -> np.ndarray:
        return rng.exponential(self.mean_s, size)


@register
@dataclass(frozen=True, kw_only=True)
class Gamma(ScipyDistribution):
    """Gamma with shape k and mean ``mean_s`` (scale mean/k)."""

    family: ClassVar[str] = "gamma"
    params: ClassVar[tuple[Param, ...]] = (Param("shape", "number"), Param("mean", "duration"))
    shape: float
    """Shape k (> 0)."""
    mean_s: float
    """Mean, seconds (> 0)."""
    _rv: Any = _hidden()

    def __post_init__(self) -> None:
        k = self._check("shape", self.shape, positive=True)
        m = self._check("mean_s", self.mean_s, positive=True)
        self._freeze(stats.gamma(a=k, scale=m / k))

    def sample(self, rng: np.random.Generator, size: Any) -> np.ndarray:
        return rng.gamma(self.shape, self.mean_s / self.shape, size)


@register
@dataclass(frozen=True, kw_only=True)
class Weibull(ScipyDistribution):
    """Weibull: cdf(x) = 1 - exp(-(x/scale)^shape)."""

    family: ClassVar[str] = "weibull"
    params: ClassVar[tuple[Param, ...]] = (Param("shape", "number"), Param("scale", "duration"))
    shape: float
    """Shape c (> 0); c < 1 is heavier-tailed than exponential."""
    scale_s: float
    """Scale, seconds (> 0)."""
    _rv: Any = _hidden()

    def __post_init__(self) -> None:
        c = self._check("shape", self.shape, positive=True)
        s = self._check("scale_s", self.scale_s, positive=True)
        self._freeze(stats.weibull_min(c=c, scale=s))

    def sample(self, rng: np.random.Generator, size: Any) -> np.ndarray:
        return rng.weibull(self.shape, size) * self.scale_s


@register
@dataclass(frozen=True, kw_only=True)
class Pareto(ScipyDistribution):
    """Classical Pareto with minimum ``scale_s``: sf(x) = (scale/x)^alpha for x >= scale.

    The mean is infinite for alpha <= 1 and the standard deviation for alpha <= 2.
    """

    family: ClassVar[str] = "pareto"
    params: ClassVar[tuple[Param, ...]] = (Param("alpha", "number"), Param("scale", "duration"))
    alpha: float
    """Tail index (> 0)."""
    scale_s: float
    """Minimum value, seconds (> 0)."""
    _rv: Any = _hidden()

    def __post_init__(self) -> None:
        a = self._check("alpha", self.alpha, positive=True)
        s = self._check("scale_s", self.scale_s, positive=True)
        self._freeze(stats.pareto(b=a, scale=s))

    def sample(self, rng: np.random.Generator, size: Any) -> np.ndarray:
        # numpy's pareto is the Lomax (Pareto II) law: 1 + X is classical with minimum 1.
        return (rng.pareto(self.alpha, size) + 1.0) * self.scale_s

    def mean(self) -> float:
        a = self.alpha
        return math.inf if a <= 1 else a * self.scale_s / (a - 1)

    def std(self) -> float:
        a = self.alpha
        return math.inf if a <= 2 else self.scale_s / (a - 1) * math.sqrt(a / (a - 2))
