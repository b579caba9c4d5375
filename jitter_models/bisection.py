"""Exact generalized inverses: bisection on the IEEE-754 bit patterns of non-negative
doubles (which they order), so a quantile found this way satisfies ``cdf(ppf(q)) >= q``
and ``ppf(cdf(x)) <= x`` in floating point, not only on paper."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .protocol import _arr


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
