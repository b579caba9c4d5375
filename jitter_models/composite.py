"""Families built from other distributions or from data: mixture, empirical, shifted, clip.

Atoms are handled exactly: quantiles are generalized inverses found by bisection on the
IEEE-754 bit patterns (``bisection.py``), so ``cdf(ppf(q)) >= q`` and ``ppf(cdf(x)) <= x``
hold in floating point, not only on paper. The public home of the composite families:
mixture in ``mixture.py``, shifted and clip in ``transforms.py``; the empirical law and
its sample file here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .bisection import _bad_q, smallest_true
from .files import excerpt, read_input_file
from .mixture import Mixture
from .protocol import Distribution, _arr, _hidden, _out, register
from .syntax import Param
from .transforms import Clip, Shifted
from .units import MAX_DELAY_S, format_duration, scaled_float

__all__ = ["MAX_SAMPLES", "MAX_SAMPLE_FILE_BYTES", "Clip", "Empirical", "Mixture", "Shifted",
           "smallest_true"]


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
