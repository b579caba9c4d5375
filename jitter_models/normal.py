"""The truncated normal family, computed from the parent normal's tail functions so both
ends keep relative precision (scipy's truncnorm loses its upper tail below sf ~ 1e-16,
which matters for the max of many ranks)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from scipy import special

from .protocol import Distribution, _arr, _out, register
from .syntax import Param

_GL10_X, _GL10_W = np.polynomial.legendre.leggauss(10)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _phi(u: np.ndarray) -> np.ndarray:
    return _INV_SQRT_2PI * np.exp(-0.5 * u * u)


@register
@dataclass(frozen=True, kw_only=True)
class Normal(Distribution):
    """Normal(mean, std) truncated at 0 by conditioning on X >= 0 (no atom at 0).

    ``mean`` and ``std`` are the parent normal's parameters, not the truncated law's
    moments. For x >= 0, cdf(x) = (Phi((x-mean)/std) - Phi(-mean/std)) / Phi(mean/std).
    Computed from the parent's tail functions so both ends keep relative precision
    (scipy's truncnorm loses the upper tail below sf ~ 1e-16).
    """

    family: ClassVar[str] = "normal"
    params: ClassVar[tuple[Param, ...]] = (Param("mean", "duration"), Param("std", "duration"))
    mean_s: float
    """The parent normal's mean, seconds (>= 0)."""
    std_s: float
    """The parent normal's standard deviation, seconds (> 0)."""

    def __post_init__(self) -> None:
        self._check("mean_s", self.mean_s)
        self._check("std_s", self.std_s, positive=True)

    @property
    def _a(self) -> float:
        return -self.mean_s / self.std_s  # the truncation point, standardized (<= 0)

    def _mass(self, t: np.ndarray) -> np.ndarray:
        """Phi(a + t) - Phi(a) for t >= 0, without cancellation for small t."""
        a = self._a
        u = a + t
        # Gauss-Legendre is exact to rounding while the interval is short on phi's scale;
        # beyond that the two Phi values differ enough for their difference to be precise.
        short = t * (1.0 + np.maximum(abs(a), np.abs(u))) < 1.0
        with np.errstate(invalid="ignore"):  # t = inf: masked below
            nodes = a + t[..., None] * (_GL10_X + 1) / 2
            by_quadrature = t / 2 * np.sum(_GL10_W * _phi(nodes), axis=-1)
        by_difference = np.where(u <= 0, special.ndtr(u) - special.ndtr(a),
                                 special.ndtr(-a) - special.ndtr(-u))
        return np.where(short, by_quadrature, by_difference)

    def cdf(self, x: Any) -> Any:
        x = _arr(x)
        t = np.where(x > 0, x, 0.0) / self.std_s
        c = self._mass(t) / special.ndtr(-self._a)
        return _out(np.where(x >= 0, np.clip(c, 0.0, 1.0), 0.0))

    def sf(self, x: Any) -> Any:
        x = _arr(x)
        u = (np.maximum(x, 0.0) - self.mean_s) / self.std_s
        s = special.ndtr(-u) / special.ndtr(-self._a)
        return _out(np.where(x >= 0, np.clip(s, 0.0, 1.0), 1.0))

    def logsf(self, x: Any) -> Any:
        x = _arr(x)
        u = (np.maximum(x, 0.0) - self.mean_s) / self.std_s
        ls = special.log_ndtr(-u) - special.log_ndtr(-self._a)
        return _out(np.where(x >= 0, np.minimum(ls, 0.0), 0.0))

    def _lower(self, q: np.ndarray) -> np.ndarray:
        """The x with cdf(x) = q, for q <= 0.5: Newton on Phi(a+t) - Phi(a) = q Z from the
        direct (coarse where q is tiny) solution."""
        a, z = self._a, special.ndtr(-self._a)
        with np.errstate(invalid="ignore", divide="ignore"):
            t = np.maximum(special.ndtri(np.minimum(special.ndtr(a) + q * z, 1.0)) - a, 0.0)
            for _ in range(6):
                slope = _phi(a + t)
                step = np.where(slope > 0, (self._mass(t) - q * z) / slope, 0.0)
                t = np.maximum(t - step, 0.0)
        return np.where(q > 0, t * self.std_s, 0.0)

    def _upper(self, p: np.ndarray) -> np.ndarray:
        """The x with sf(x) = p, for p <= 0.5, from the parent's tail in log space."""
        with np.errstate(divide="ignore"):
            log_level = np.log(p) + special.log_ndtr(-self._a)
        return np.maximum(self.mean_s - self.std_s * special.ndtri_exp(log_level), 0.0)

    def _quantile(self, q: Any, of_sf: bool) -> Any:
        """ppf (or isf): each half from the side where it keeps relative precision, each
        evaluated only where needed (the lower half's Newton steps cost the most)."""
        q = _arr(q)
        qq = np.clip(np.nan_to_num(q), 0.0, 1.0)
        x = np.empty(qq.shape)
        low = (qq <= 0.5) != of_sf  # where the answer is in the lower half
        x[low] = self._lower(qq[low] if not of_sf else 1.0 - qq[low])
        x[~low] = self._upper(qq[~low] if of_sf else 1.0 - qq[~low])
        return _out(np.where((q >= 0) & (q <= 1), x, np.nan))

    def ppf(self, q: Any) -> Any:
        return self._quantile(q, of_sf=False)

    def isf(self, q: Any) -> Any:
        return self._quantile(q, of_sf=True)

    def mean(self) -> float:
        a = self._a
        return self.mean_s + self.std_s * float(_phi(np.float64(a)) / special.ndtr(-a))

    def std(self) -> float:
        a = self._a
        h = float(_phi(np.float64(a)) / special.ndtr(-a))  # inverse Mills ratio
        return self.std_s * math.sqrt(max(1.0 + a * h - h * h, 0.0))

    def support(self) -> tuple[float, float]:
        return 0.0, math.inf

    def sample(self, rng: np.random.Generator, size: Any) -> np.ndarray:
        n = int(np.prod(size))
        accept = float(special.ndtr(-self._a))
        if accept < 0.5:
            return np.reshape(_arr(self.ppf(rng.random(n))), size)
        # Rejection from the parent normal is exact and, at this acceptance, fast.
        out = rng.normal(self.mean_s, self.std_s, int(n / accept * 1.01) + 32)
        out = out[out >= 0]
        while out.size < n:
            more = rng.normal(self.mean_s, self.std_s, int((n - out.size) / accept) + 32)
            out = np.concatenate([out, more[more >= 0]])
        return np.reshape(out[:n], size)
