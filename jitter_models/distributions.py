"""Delay distributions: one protocol, one small class per family, a registry.

Every value is a finite, non-negative float64 number of seconds. Parameters that are
durations are float seconds here; text such as ``"50us"`` is parsed at the edge
(:func:`parse`). The composite families (mixture, empirical, shifted, clip) live in
``composite.py`` and register themselves in the same registry.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from scipy import stats

from .syntax import Call, Param, kwargs_from_call, kwargs_from_table, parse_call
from .units import MAX_DELAY_S, format_duration

FAMILIES: dict[str, type[Distribution]] = {}


def register(cls: type[Distribution]) -> type[Distribution]:
    """Class decorator: make a family known to :func:`parse`."""
    FAMILIES[cls.family] = cls
    return cls


_LANDMARK_LEVELS = np.array([1e-6, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99,
                             0.999, 1 - 1e-6])


def _arr(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _out(a: np.ndarray) -> Any:
    """0-d arrays come back as numpy scalars, like scipy's."""
    return a[()] if a.ndim == 0 else a


class Distribution(ABC):
    """The protocol every family implements (plus ``family`` and ``params``)."""

    family: ClassVar[str]
    params: ClassVar[tuple[Param, ...]]

    # ---- what each family defines
    @abstractmethod
    def cdf(self, x: Any) -> Any: ...
    @abstractmethod
    def sf(self, x: Any) -> Any: ...
    @abstractmethod
    def ppf(self, q: Any) -> Any:
        """Generalized inverse: the smallest x with cdf(x) >= q."""
    @abstractmethod
    def isf(self, q: Any) -> Any:
        """Generalized inverse survival: the smallest x with sf(x) <= q."""
    @abstractmethod
    def sample(self, rng: np.random.Generator, size: Any) -> np.ndarray: ...
    @abstractmethod
    def mean(self) -> float: ...
    @abstractmethod
    def std(self) -> float: ...
    @abstractmethod
    def support(self) -> tuple[float, float]: ...

    # ---- shared behaviour
    def logsf(self, x: Any) -> Any:
        with np.errstate(divide="ignore"):
            return _out(np.log(_arr(self.sf(x))))

    def logcdf(self, x: Any) -> Any:
        """log F(x), accurate where F is near 1 (through logsf and log1p)."""
        x = _arr(x)
        ls = _arr(self.logsf(x))
        with np.errstate(divide="ignore", invalid="ignore"):
            upper = np.log1p(-np.exp(ls))
            lower = np.log(_arr(self.cdf(x)))
        return _out(np.where(ls < -0.6931471805599453, upper, lower))

    def breakpoints(self) -> list[float]:
        """Where the CDF is not smooth: atoms and finite support ends."""
        lo, hi = self.support()
        return [v for v in (lo, hi) if math.isfinite(v)]

    def landmarks(self) -> np.ndarray:
        """Quantiles that mark the scale of every part of the law (for a mixture, of each
        component), so integrals over x can place knots where the CDF rises."""
        if self.is_discrete:
            return np.empty(0)
        x = np.asarray(self.ppf(_LANDMARK_LEVELS), dtype=np.float64)
        return x[np.isfinite(x)]

    @property
    def is_discrete(self) -> bool:
        """True when all the mass sits on atoms (the CDF is a step function)."""
        return False

    def sample_max(self, rng: np.random.Generator, n: np.ndarray) -> np.ndarray:
        """One draw of the max of ``n[i]`` iid values for each i, by inverting the CDF
        at U**(1/n) (computed as a survival level, so large n keeps its precision)."""
        u = rng.random(np.shape(n))
        with np.errstate(divide="ignore"):
            sf_level = -np.expm1(np.log(u) / n)
        return _arr(self.isf(sf_level))

    def __str__(self) -> str:
        vals = [(p, getattr(self, p.attr)) for p in self.params]
        if len(vals) == 1:
            return f"{self.family}({_fmt(*vals[0])})"
        return f"{self.family}(" + ", ".join(f"{p.name}={_fmt(p, v)}" for p, v in vals) + ")"

    def _check(self, name: str, value: Any, *, positive: bool = False) -> float:
        """Validate a finite (non-negative or positive) parameter; returns it as float."""
        attr, name = name, name.removesuffix("_s")  # messages use the spec's field name
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
            raise ValueError(f"{self.family}: {name}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{self.family}: {name}: must be a finite number, got {value!r}")
        if positive and value <= 0:
            raise ValueError(f"{self.family}: {name}: must be > 0, got {value!r}")
        if value < 0:
            raise ValueError(f"{self.family}: {name}: must be >= 0, got {value!r}")
        if attr.endswith("_s") and value > MAX_DELAY_S:  # a duration: at most the max delay
            raise ValueError(f"{self.family}: {name}: must be at most "
                             f"{format_duration(MAX_DELAY_S)} (the maximum delay, one hour), "
                             f"got {format_duration(value)}")
        object.__setattr__(self, attr, value)
        return value


def _fmt(param: Param, value: Any) -> str:
    if param.kind == "duration":
        return format_duration(value)
    if param.kind == "number":
        return repr(float(value))
    if param.kind == "path":
        return '"' + value + '"'
    if param.kind == "components":
        return ", ".join(f"{w!r}*{d}" for w, d in value)
    return str(value)


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


def _hidden() -> Any:
    """A derived attribute (e.g. the frozen scipy law): not a parameter, not compared."""
    return field(init=False, repr=False, compare=False, default=None)


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
        return rng.lognormal(math.log(self.median_s), self.sigma, size)


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


# --- parsing ----------------------------------------------------------------------


def _family(name: str) -> type[Distribution]:
    from . import composite, normal  # noqa: F401  (they register their families)

    try:
        return FAMILIES[name]
    except KeyError:
        known = ", ".join(sorted(FAMILIES))
        raise ValueError(f"unknown distribution family {name!r} (known: {known})") from None


def parse(spec: str | Mapping[str, Any] | Call | Distribution) -> Distribution:
    """A distribution from its string form, its TOML-table form, or itself.

    ``parse("lognormal(median=50us, sigma=0.8)")``, ``parse("constant(5us)")``,
    ``parse({"family": "lognormal", "median": "50us", "sigma": 0.8})``.
    ``parse(str(d)) == d`` for every distribution ``d``.
    """
    if isinstance(spec, Distribution):
        return spec
    if isinstance(spec, str):
        spec = parse_call(spec)
    if isinstance(spec, Call):
        cls = _family(spec.name)
        return cls(**kwargs_from_call(cls.family, cls.params, spec, parse))
    if isinstance(spec, Mapping):
        name = spec.get("family")
        if not isinstance(name, str):
            raise ValueError(f"distribution table needs a 'family' string, got {dict(spec)!r}")
        cls = _family(name)
        return cls(**kwargs_from_table(cls.family, cls.params, spec, parse))
    raise ValueError(f"expected a distribution spec (text or table), got {spec!r}")


def to_table(dist: Distribution) -> dict[str, Any]:
    """The TOML-table form of ``dist`` (inverse of :func:`parse` on tables)."""
    out: dict[str, Any] = {"family": dist.family}
    for p in dist.params:
        v = getattr(dist, p.attr)
        if p.kind == "components":
            out[p.name] = [{"weight": w, "dist": to_table(d)} for w, d in v]
        elif p.kind == "dist":
            out[p.name] = to_table(v)
        elif p.kind == "duration":
            out[p.name] = format_duration(v)
        else:
            out[p.name] = v
    return out
