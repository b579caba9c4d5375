"""Injector fidelity: requested delay against the delay the caller actually sees.

Fidelity is measured from the caller's side, with the loop shape of
:mod:`collectives.microbench`: ``t0 = now_ns(); injector.inject(t0, d); t1 = now_ns()``,
and the achieved delay is ``t1 - t0`` (what a rank records as ``t_arrive - t_start``), not
the injector's own end-of-spin clock. So the cost of the call and of the last clock read
counts against the injector, as it does in a run.

One row per requested constant (``samples`` repetitions each) and one row for a random
distribution (``samples`` draws, each injected once):

- ``requested_us``: the constant (None for the random row); ``dist``: its spec text;
- ``median_abs_err_us``, ``p99_abs_err_us``: nearest-rank percentiles of
  ``|achieved - requested|``;
- ``mean_err_us``: signed mean of ``achieved - requested`` (positive: late on average);
- ``ks``: for the random row, the two-sample Kolmogorov-Smirnov statistic of the achieved
  against the requested delays (None for constants, where it says nothing more);
- ``samples``: how many delays the row is made of.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

import jitter_models
from jitter_models.percentiles import nearest_rank
from jitter_models.units import format_us

from .inject import Injector, make_injector
from .timing import now_ns

DEFAULT_CONSTANTS_US = (1, 10, 100, 1000)
DEFAULT_RANDOM = "lognormal(median=50us, sigma=0.8)"
WARMUP = 3
"""Untimed injections before each row: the first calls pay for cold caches."""


def measure(injector: Injector, delays_ns: Sequence[int]) -> np.ndarray:
    """Inject each delay once; the achieved delays (int64 ns) as the caller sees them."""
    inject, clock = injector.inject, now_ns
    req = [int(d) for d in delays_ns]  # Python ints: nothing to convert in the loop
    got = [0] * len(req)
    for d in req[:WARMUP]:
        t0 = clock()
        inject(t0, d)
    for i, d in enumerate(req):
        t0 = clock()
        inject(t0, d)
        t1 = clock()
        got[i] = t1 - t0
    return np.array(got, dtype=np.int64)


def _row(requested_us: float | None, dist: str, req_ns: np.ndarray, got_ns: np.ndarray,
         ks: float | None) -> dict[str, Any]:
    err_ns = got_ns - req_ns
    abs_err = np.abs(err_ns)
    return {
        "requested_us": requested_us,
        "dist": dist,
        "samples": int(req_ns.size),
        "median_abs_err_us": nearest_rank(abs_err, 50) / 1e3,
        "p99_abs_err_us": nearest_rank(abs_err, 99) / 1e3,
        "mean_err_us": float(err_ns.mean()) / 1e3,
        "ks": ks,
    }


def calibrate(injector: Injector | str, *, constants_us: Sequence[float] = DEFAULT_CONSTANTS_US,
              random_dist: str | None = DEFAULT_RANDOM, samples: int = 500, seed: int = 0
              ) -> list[dict[str, Any]]:
    """Fidelity rows for ``injector`` (an :class:`Injector` or a registered name such as
    ``"host"`` or ``"none"``): one per constant in ``constants_us``, then one for
    ``random_dist`` (skipped when None), its draws seeded by ``seed``."""
    if isinstance(injector, str):
        injector = make_injector(injector)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples: must be an integer >= 1, got {samples!r}")
    for c in constants_us:
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) \
                or c < 0:
            raise ValueError(f"constants_us: each must be a finite number >= 0, got {c!r}")
    rows = []
    for c in constants_us:
        req = np.full(samples, round(c * 1e3), dtype=np.int64)
        got = measure(injector, req.tolist())
        rows.append(_row(float(c), f"constant({c:g}us)", req, got, None))
    if random_dist is not None:
        draws = jitter_models.parse(random_dist).sample(np.random.default_rng(seed), samples)
        req = np.rint(np.asarray(draws) * 1e9).astype(np.int64)
        got = measure(injector, req.tolist())
        ks = float(stats.ks_2samp(got, req).statistic)
        rows.append(_row(None, random_dist, req, got, ks))
    return rows


HEADER = ("requested_us", "dist", "median_abs_err_us", "p99_abs_err_us", "mean_err_us", "ks")


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "n/a" if key == "ks" else "-"
    if key == "dist":
        return str(value)
    if key == "ks":
        return f"{value:.4f}"
    return format_us(value * 1e-6)


def render(rows: Sequence[dict[str, Any]]) -> str:
    """Requested against achieved, one line per row; units in the header."""
    cells = [[_cell(k, r[k]) for k in HEADER] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(HEADER)]
    # dist is text: left-aligned; the numbers right-aligned.
    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if k == "dist" else v.rjust(w)
                         for k, v, w in zip(HEADER, values, widths)).rstrip()
    return "\n".join([line(HEADER)] + [line(c) for c in cells])
