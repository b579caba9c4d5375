"""Fit every candidate family to latency samples and rank them (``jitterlab fit``).

For each candidate (``fitters.FITTERS``): the maximum-likelihood estimate, its
log-likelihood, AIC = 2k - 2 log L and BIC = k log n - 2 log L (k parameters, n samples;
the ``best`` is the lowest BIC), the Anderson-Darling statistic A^2 of the fit and its
p-value by parametric bootstrap, confidence intervals for the parameters, and a tail
check.

Why a bootstrap: a KS or AD p-value from the textbook tables assumes the parameters were
known in advance; estimated from the same samples, the fit sits closer to the data than
the true law does and the tabled p-value is far too large. The parametric bootstrap
(Stute, Gonzalez Manteiga and Presedo Quindimil 1993) draws B samples of size n from the
fitted law, refits each and takes the share of refitted A^2 at least the observed one:
p = (1 + #{A*_b >= A}) / (B + 1). The same B refits give the parameters' 95% intervals,
basic (reverse-percentile) bootstrap intervals on each parameter's natural scale
(``basic_interval``; tests/test_fit.py and benchmarks/fit_coverage.py measure their
coverage).

The tail check: the fit's p99 and p99.9 beside the data's (nearest rank) and the data's
distribution-free 95% intervals (``percentiles.quantile_interval``). A tail quantity
needs about 4 / (1 - p) samples (the project's rule for the steps a percentile needs):
fewer than ``MIN_SAMPLES`` = 400 (the p99's) is refused; the p99.9 is left out (None)
under 4,000.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .fitters import FITTERS, Fitter, Params
from .percentiles import nearest_rank, quantile_interval
from .units import MAX_DELAY_S

MIN_SAMPLES = 400
"""The fewest samples ``fit`` takes: 4 / (1 - 0.99), for the p99's tail check."""
TAILS = {"p99": 99.0, "p999": 99.9}
DEFAULT_BOOTSTRAP = 199
"""Parametric-bootstrap replicates per candidate: a p-value's resolution is 1/(B+1)."""
_EPS = 1e-300


def check_samples(x: Any, where: str = "samples", positions: Any = None,
                  unit: str = "position") -> np.ndarray:
    """The samples as float64 seconds, or ``BadInput`` naming what is wrong and where:
    how many samples are not finite and > 0 and the first few of their ``positions``
    (the file's line numbers, say; default 1, 2, ...), or too few samples."""
    from .errors import BadInput

    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size == 0:
        raise BadInput(f"{where}: no samples")
    bad = ~np.isfinite(x) | (x <= 0)
    if bad.any():
        at = np.arange(1, x.size + 1) if positions is None else np.asarray(positions)
        first = ", ".join(str(int(i)) for i in at[bad][:5]) + (", ..." if bad.sum() > 5
                                                                else "")
        raise BadInput(f"{where}: {int(bad.sum())} of {x.size} samples are not finite and "
                       f"> 0 (a positive family needs positive latencies), the first at "
                       f"{unit}{'s' if bad.sum() > 1 else ''} {first}")
    big = x > MAX_DELAY_S
    if big.any():
        at = np.arange(1, x.size + 1) if positions is None else np.asarray(positions)
        raise BadInput(f"{where}: {int(big.sum())} sample(s) over one hour (the longest "
                       f"delay a schedule takes), the first at {unit} {int(at[big][0])}")
    if x.size < MIN_SAMPLES:
        raise BadInput(f"{where}: {x.size} samples, too few: the p99's tail check needs "
                       f"at least {MIN_SAMPLES} (4 / (1 - 0.99))")
    return x


def anderson_darling(x_sorted: np.ndarray, cdf: np.ndarray) -> float:
    """A^2 of sorted samples against the fitted CDF at them."""
    n = x_sorted.size
    f = np.clip(cdf, _EPS, 1.0)
    s = np.clip(1.0 - cdf, _EPS, 1.0)
    i = np.arange(1, n + 1)
    return float(-n - ((2 * i - 1) * (np.log(f) + np.log(s[::-1]))).sum() / n)


@dataclass
class Candidate:
    """One family's fit (``as_dict`` is its JSON row)."""

    family: str
    params: Params
    dist: str
    loglik: float
    aic: float
    bic: float
    ad: float
    p_value: float | None
    bootstrap: int
    intervals: dict[str, list[float]] = field(default_factory=dict)
    tail: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed_refits: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _loglik(f: Fitter, x: np.ndarray, p: Params) -> float:
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ll = float(f.logpdf(x, p).sum())
    return ll if math.isfinite(ll) else -math.inf


def _ad(f: Fitter, x_sorted: np.ndarray, p: Params) -> float:
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return anderson_darling(x_sorted, f.cdf(x_sorted, p))


def fit_one(f: Fitter, x: np.ndarray, seed: Any, bootstrap: int) -> Candidate:
    """``f`` fitted to ``x`` (checked samples, seconds), with ``bootstrap`` parametric
    replicates drawn from ``np.random.default_rng(seed)``."""
    from .distributions import parse

    xs = np.sort(x)
    n = xs.size
    est = f.mle(xs)
    ll = _loglik(f, xs, est)
    k = f.n_params
    a2 = _ad(f, xs, est)
    rng = np.random.default_rng(seed)
    stats, refits, failed = [], [], 0
    for _ in range(bootstrap):
        xb = np.sort(f.sample(rng, est, n))
        try:
            if xb.min() <= 0:
                raise ValueError("a replicate sample <= 0")
            eb = f.mle(xb, est)
        except (ValueError, ArithmeticError, RuntimeError):
            failed += 1  # counted against the fit: as if its A^2 were the largest
            stats.append(math.inf)
            continue
        stats.append(_ad(f, xb, eb))
        refits.append(eb)
    p_value = ((1 + sum(s >= a2 for s in stats)) / (bootstrap + 1)) if bootstrap else None
    intervals = {name: basic_interval(est[name], [r[name] for r in refits], name)
                 for name in f.names} if len(refits) >= 2 else {}
    if "shift" in intervals:  # a floor is below the smallest sample, whatever the refits
        intervals["shift"][1] = min(intervals["shift"][1], float(xs[0]))
    text = f.text(est)
    dist = parse(text)
    tail = {}
    for key, p in TAILS.items():
        if n < 4 / (1 - p / 100) - 1e-9:
            tail[key] = None
            continue
        lo, hi = quantile_interval(xs, p)
        tail[key] = {"fit": float(dist.ppf(p / 100)), "data": nearest_rank(xs, p),
                     "data_low": lo, "data_high": hi}
    return Candidate(f.family, est, text, ll, 2 * k - 2 * ll, k * math.log(n) - 2 * ll, a2,
                     p_value, bootstrap, intervals, tail, failed)


def basic_interval(estimate: float, refits: Sequence[float], name: str,
                   level: float = 0.95) -> list[float]:
    """The basic (reverse-percentile) bootstrap interval of one parameter: with g the
    scale on which estimate - truth is close to pivotal (the shift: linear, a location;
    the weight: logit; every other parameter, positive, a scale or a shape: log),
    [g^-1(2 g(est) - q_hi), g^-1(2 g(est) - q_lo)] from the refits' quantiles of g. The
    percentile interval [q_lo, q_hi] is the mirror image and is wrong where the
    estimator's law is skewed (a floor estimated from the smallest samples)."""
    v = np.asarray(refits, dtype=np.float64)
    a = (1 - level) / 2
    if name == "shift":
        g, ginv = (lambda t: t), (lambda t: max(float(t), 0.0))
    elif name == "weight":
        g = lambda t: np.log(t / (1 - t))  # noqa: E731
        ginv = lambda t: float(1 / (1 + np.exp(-t)))  # noqa: E731
    else:
        g, ginv = np.log, (lambda t: float(np.exp(t)))
    with np.errstate(divide="ignore", invalid="ignore"):
        gv = g(v)
        ge = g(np.float64(estimate))
    gv = gv[np.isfinite(gv)]
    if gv.size < 2 or not np.isfinite(ge):
        return [math.nan, math.nan]
    q_lo, q_hi = np.quantile(gv, [a, 1 - a])
    return [ginv(2 * ge - q_hi), ginv(2 * ge - q_lo)]


def _fit_job(args: tuple) -> Candidate:
    name, x, seed, bootstrap = args
    return fit_one(FITTERS[name], x, seed, bootstrap)


def fit_all(x: Any, *, seed: int = 0, bootstrap: int = DEFAULT_BOOTSTRAP,
            families: Sequence[str] | None = None, jobs: int | None = None,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every candidate fitted to ``x`` (seconds), ranked by BIC: ``{"n", "bootstrap",
    "seed", "best", "candidates"}`` with each candidate's ``Candidate.as_dict``. Each
    candidate's bootstrap has its own stream ([seed, its index in FITTERS]), so the result
    does not depend on ``jobs`` (processes; default: the cores, at most the candidates)."""
    x = check_samples(x)
    names = list(FITTERS) if families is None else list(families)
    for name in names:
        if name not in FITTERS:
            raise ValueError(f"family: unknown {name!r} (known: {', '.join(FITTERS)})")
    order = list(FITTERS)
    work = [(name, x, [seed, order.index(name)], bootstrap) for name in names]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(work)))
    say = progress or (lambda text: None)
    if jobs == 1:
        done = []
        for w in work:
            done.append(_fit_job(w))
            say(f"fit: {w[0]} done ({len(done)} of {len(work)})")
    else:
        with ProcessPoolExecutor(jobs) as pool:
            done = []
            for c in pool.map(_fit_job, work):
                done.append(c)
                say(f"fit: {c.family} done ({len(done)} of {len(work)})")
    done.sort(key=lambda c: (not math.isfinite(c.bic), c.bic))
    rows = [c.as_dict() for c in done]
    return {"n": int(x.size), "bootstrap": bootstrap, "seed": seed, "best": rows[0],
            "candidates": rows, "warnings": sample_warnings(x)}


TIES_AT_MIN = 0.01
"""A share of samples equal to the smallest above which ``fit`` warns."""
FEW_VALUES = 50


def sample_warnings(x: np.ndarray) -> list[str]:
    """What in the samples can mislead a continuous fit: heavy ties (a clock's resolution,
    rounding). Ties at the minimum act as a point mass that Pareto (its scale is the
    minimum) and the shifted fits (their floor just below it) exploit, so BIC can prefer
    them for that alone."""
    out = []
    distinct = np.unique(x)
    at_min = float(np.mean(x == distinct[0]))
    if distinct.size < FEW_VALUES:
        out.append(f"the {x.size} samples take only {distinct.size} distinct values "
                   "(quantized: a clock's resolution or rounding): a continuous fit's "
                   "likelihood, and the BIC ranking, mean little at that resolution")
    if at_min > TIES_AT_MIN:
        out.append(f"{at_min:.1%} of the samples equal the smallest "
                   f"({distinct[0] * 1e6:.6g} us): Pareto and the shifted fits put a floor "
                   "there and may win on BIC for that alone")
    return out
