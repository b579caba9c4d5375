"""The delay-distribution protocol (``Distribution``) and the registry of families.

Every value is a finite, non-negative float64 number of seconds. Each family is one small
frozen dataclass that implements the protocol, declares its ``params`` (``syntax.Param``:
one declaration drives parsing, ``str``, the table form and the error messages) and
registers itself with :func:`register`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import field
from typing import Any, ClassVar

import numpy as np

from .syntax import Param
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


def _hidden() -> Any:
    """A derived attribute (e.g. the frozen scipy law): not a parameter, not compared."""
    return field(init=False, repr=False, compare=False, default=None)
