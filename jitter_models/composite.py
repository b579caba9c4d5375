"""Families built from other distributions or from data: mixture, empirical, shifted, clip.

Atoms are handled exactly: quantiles are generalized inverses found by bisection on the
IEEE-754 bit patterns (which order non-negative doubles), so ``cdf(ppf(q)) >= q`` and
``ppf(cdf(x)) <= x`` hold in floating point, not only on paper.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from scipy.special import logsumexp

from .distributions import Distribution, _arr, _hidden, _out, register
from .files import excerpt, read_input_file
from .syntax import Param
from .units import MAX_DELAY_S, format_duration, scaled_float

_WEIGHT_TOLERANCE = 1e-9


def smallest_true(pred: Callable[[np.ndarray], np.ndarray], lo: Any, hi: Any) -> np.ndarray:
    """Elementwise smallest float x in [lo, hi] (both >= 0) with ``pred(x)``, for a pred
    that is monotone (False then True) and true at ``hi``. At most 64 rounds, exact."""
    lo, hi = np.broadcast_arrays(np.maximum(_arr(lo), 0.0), _arr(hi))
    with np.errstate(over="ignore", under="ignore"):  # pred may probe huge x
        return _bisect_bits(pred, lo, hi)


def _bisect_bits(pred: Callable[[np.ndarray], np.ndarray], lo: np.ndarray, hi: np.ndarray
                 ) -> np.ndarray:
    a = lo.astype(np.float64).view(np.int64).copy()
    b = hi.astype(np.float64).view(np.int64).copy()
    done = pred(lo)
    b = np.where(done, a, b)
    while True:
        active = b - a > 1
        if not active.any():
            return b.view(np.float64)
        m = a + (b - a) // 2
        pm = pred(m.view(np.float64)) & active
        b = np.where(pm, m, b)
        a = np.where(active & ~pm, m, a)


def _bad_q(q: np.ndarray) -> np.ndarray:
    return ~((q >= 0) & (q <= 1))


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
        n = int(np.prod(size))
        which = np.searchsorted(np.cumsum(self._w), rng.random(n), side="right")
        which = np.minimum(which, len(self._w) - 1)
        out = np.empty(n)
        for j, d in enumerate(self._dists):
            mask = which == j
            out[mask] = d.sample(rng, int(mask.sum()))
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


@register
@dataclass(frozen=True, kw_only=True)
class Empirical(Distribution):
    """The empirical law of samples in a text file: a header line ``latency_us`` or
    ``latency_ns``, then one sample per line (``#`` comments and blank lines skipped).

    Quantiles are exact empirical quantiles (the generalized inverse of the ECDF);
    sampling picks a recorded sample uniformly, which is inverse-ECDF sampling.
    """

    family: ClassVar[str] = "empirical"
    params: ClassVar[tuple[Param, ...]] = (Param("file", "path"),)
    file: str
    """Path of the sample file, relative to the working directory."""
    _x: Any = _hidden()

    def __post_init__(self) -> None:
        object.__setattr__(self, "_x", _read_samples(self.file))

    def cdf(self, x: Any) -> Any:
        return _out(np.searchsorted(self._x, _arr(x), side="right") / self._x.size)

    def sf(self, x: Any) -> Any:
        m = self._x.size
        return _out((m - np.searchsorted(self._x, _arr(x), side="right")) / m)

    def _index(self, q: np.ndarray, of_sf: bool) -> np.ndarray:
        # Smallest k (samples at or below) with k/m >= q, or (m-k)/m <= q for the sf,
        # in exactly the float arithmetic cdf/sf use; then x = xs[k-1].
        m = self._x.size
        k = np.ceil((m - q * m) if of_sf else q * m)
        for _ in range(2):
            ok_lower = ((m - (k - 1)) / m <= q) if of_sf else ((k - 1) / m >= q)
            k = np.where(ok_lower & (k >= 1), k - 1, k)
            ok = ((m - k) / m <= q) if of_sf else (k / m >= q)
            k = np.where(ok, k, k + 1)
        return np.clip(k, 1, m).astype(np.int64) - 1

    def ppf(self, q: Any) -> Any:
        q = _arr(q)
        x = self._x[self._index(np.where(_bad_q(q), 0.5, q), of_sf=False)]
        return _out(np.where(_bad_q(q), np.nan, x))

    def isf(self, q: Any) -> Any:
        q = _arr(q)
        x = self._x[self._index(np.where(_bad_q(q), 0.5, q), of_sf=True)]
        return _out(np.where(_bad_q(q), np.nan, x))

    def sample(self, rng: np.random.Generator, size: Any) -> np.ndarray:
        return self._x[rng.integers(0, self._x.size, size)]

    def mean(self) -> float:
        return float(self._x.mean())

    def std(self) -> float:
        return float(self._x.std())

    def support(self) -> tuple[float, float]:
        return float(self._x[0]), float(self._x[-1])

    def breakpoints(self) -> list[float]:
        return np.unique(self._x).tolist()

    @property
    def is_discrete(self) -> bool:
        return True


# A sample file is a regular file of at most this many samples and bytes (10^7 samples is
# a week of one sample per 60 ms; 256 MiB holds them with comments).
MAX_SAMPLES = 10**7
MAX_SAMPLE_FILE_BYTES = 256 * 2**20


def _read_samples(path: str) -> np.ndarray:
    where = f"empirical: file {path!r}"
    try:
        text = read_input_file(path, what=where, max_bytes=MAX_SAMPLE_FILE_BYTES)
    except OSError as exc:
        raise ValueError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    lines = text.splitlines()
    exponent = None
    values: list[float] = []
    for lineno, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if exponent is None:
            units = {"latency_us": -6, "latency_ns": -9}
            if line not in units:
                raise ValueError(f"{where}: line {lineno}: the header must be latency_us or "
                                 f"latency_ns, got {excerpt(line)}")
            exponent = units[line]
            continue
        try:
            v = scaled_float(line, exponent)
        except Exception:
            raise ValueError(f"{where}: line {lineno}: not a number: {excerpt(line)}") from None
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"{where}: line {lineno}: samples must be finite and >= 0, "
                             f"got {excerpt(line)}")
        if v > MAX_DELAY_S:
            raise ValueError(f"{where}: line {lineno}: samples must be at most "
                             f"{format_duration(MAX_DELAY_S)} (the maximum delay, one hour), "
                             f"got {excerpt(line)}")
        if len(values) == MAX_SAMPLES:
            raise ValueError(f"{where}: line {lineno}: more than {MAX_SAMPLES} samples")
        values.append(v)
    if not values:
        raise ValueError(f"{where}: no samples")
    return np.sort(np.array(values, dtype=np.float64))


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
