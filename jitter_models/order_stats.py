"""The maximum of N delays: its mean, quantiles, tail probability and direct sampling.

Every function takes either ``(dist, n)`` (n iid ranks) or a list of groups
``[(dist, count), ...]`` (non-identical ranks: the max has CDF prod_i F_i(x)^count_i), e.g.
``expected_max([(lognormal, 1023), (straggler, 1)])``. With groups, leave ``n`` out:
``max_quantile(groups, 0.99)``, ``sample_max(groups, rng, size)``.

All work is done in log space: log G(x) = sum_i count_i * log F_i(x), with log F from
``logsf`` through ``log1p`` where F is near 1, so tails far below 1e-16 do not cancel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .bisection import smallest_true
from .distributions import Distribution, parse

Groups = list[tuple[Distribution, int]]
DistOrGroups = Distribution | str | Sequence[tuple[Any, int]]

# Levels of the group max's CDF used as integration knots: a dense grid through the body,
# then one knot per decade of the survival function down to 1e-300.
_LOWER_LEVELS = np.array([1e-12, 1e-8, 1e-5, 1e-3, 1e-2, 0.03, 0.1, 0.2, 0.3, 0.4, 0.5])
_UPPER_SF = np.concatenate([[0.4, 0.3, 0.2, 0.1, 0.05, 0.02], 10.0 ** -np.arange(2.0, 301.0)])
_GL_X, _GL_W = np.polynomial.legendre.leggauss(20)


def _count(value: Any, what: str = "n") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _groups(dist: DistOrGroups, n: Any) -> Groups:
    if isinstance(dist, (Distribution, str)):
        if n is None:
            raise ValueError("n is required with a single distribution")
        return [(parse(dist), _count(n))]
    if n is not None:
        raise ValueError("pass either (dist, n) or a list of (dist, count) groups, not both")
    groups = [(parse(d), _count(c, "group count")) for d, c in dist]
    if not groups:
        raise ValueError("groups must not be empty")
    return groups


def _split(dist: DistOrGroups, args: tuple) -> tuple[Groups, tuple]:
    """(dist, n, *rest) or (groups, *rest) -> (groups, rest)."""
    if isinstance(dist, (Distribution, str)):
        if not args:
            raise ValueError("n is required with a single distribution")
        return _groups(dist, args[0]), args[1:]
    return _groups(dist, None), args


def log_cdf_max(groups: Groups, x: Any) -> np.ndarray:
    """log P(max <= x)."""
    x = np.asarray(x, dtype=np.float64)
    total = np.zeros(x.shape)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        for d, c in groups:
            total = total + c * np.asarray(d.logcdf(x), dtype=np.float64)
    return total


def _exceed(groups: Groups, x: Any) -> np.ndarray:
    """P(max > x); +0.0, not -0.0, where it is zero."""
    with np.errstate(invalid="ignore"):
        return -np.expm1(log_cdf_max(groups, x)) + 0.0


def _group_knots(d: Distribution, c: int) -> np.ndarray:
    """Quantiles of one group's max at the knot levels (as survival levels of d)."""
    log_p = np.concatenate([np.log(_LOWER_LEVELS), np.log1p(-_UPPER_SF)])
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        x = np.asarray(d.isf(-np.expm1(log_p / c)), dtype=np.float64)
    return x[np.isfinite(x)]


def expected_max(dist: DistOrGroups, n: Any = None) -> float:
    """E[max] = integral over x >= 0 of (1 - prod F_i(x)^n_i); ``inf`` if any mean is.

    The range is split at the distributions' atoms and support ends, at landmark
    quantiles of every component, and at quantiles of the max, so the integrand is smooth
    on every piece whatever the scale; pieces away from 0 are integrated in log x
    (power-law tails become exponentials) with 20-point Gauss-Legendre, halved until the
    halves agree with the whole to 1e-12 of the total; a power-law tail past the last knot
    (sf < 1e-300) is added in closed form.
    """
    groups = _groups(dist, n)
    if any(not math.isfinite(d.mean()) for d, _ in groups):
        return math.inf
    return moment_of_max(groups, 1)


def moment_of_max(groups: Groups, power: int) -> float:
    """E[max ** power] = lo**power + integral past lo of power x^(power-1) P(max > x) dx,
    for finite moments (the caller checks)."""
    lo = max(d.support()[0] for d, _ in groups)  # the max is never below any group's min
    hi = max(d.support()[1] for d, _ in groups)
    if hi <= lo:
        return float(lo) ** power
    kinks = np.array(sorted({b for d, _ in groups for b in d.breakpoints()}))
    if all(d.is_discrete for d, _ in groups):
        # A step function: exact sum over the atoms.
        x = kinks[(kinks >= lo) & (kinks <= hi)]
        return float(lo**power + np.sum(np.diff(x**power) * _exceed(groups, x[:-1])))
    knots = np.concatenate([kinks, *[_group_knots(d, c) for d, c in groups],
                            *[d.landmarks() for d, _ in groups]])
    # Below every group's 1e-12 quantile the integrand is within 1e-12 of its value at lo:
    # no knots needed there (an empirical file can have a million atoms).
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        floor = max(float(d.isf(-math.expm1(math.log(1e-12) / c))) for d, c in groups)
    floor = max(lo, floor)
    knots = knots[(knots > floor) & (knots < hi) & np.isfinite(knots)]
    edges = np.unique(np.concatenate([[lo, floor], knots, [hi] if math.isfinite(hi) else []]))
    total = lo**power + _adaptive(groups, edges[:-1], edges[1:], power)
    if not math.isfinite(hi) and edges.size >= 2:
        total += _power_tail(groups, edges[-2], edges[-1], power)
    return float(total)


def _gauss_legendre(groups: Groups, a: np.ndarray, b: np.ndarray, power: int) -> np.ndarray:
    """20-point Gauss-Legendre of power x^(power-1) P(max > x) on each [a, b]; in log x
    where a > 0. Nodes form one (pieces, 20) array: one vectorized CDF evaluation."""
    use_log = (a > 0)[:, None]
    ya, yb = np.log(np.where(a > 0, a, 1.0)), np.log(np.where(a > 0, b, 1.0))
    lin_x = (a + b)[:, None] / 2 + (b - a)[:, None] / 2 * _GL_X
    x = np.where(use_log, np.exp((ya + yb)[:, None] / 2 + (yb - ya)[:, None] / 2 * _GL_X),
                 lin_x)
    jac = np.where(use_log, x * ((yb - ya)[:, None] / 2), (b - a)[:, None] / 2)
    weight = power * x ** (power - 1) if power != 1 else 1.0
    return np.sum(_exceed(groups, x) * weight * jac * _GL_W, axis=1)


def _adaptive(groups: Groups, a: np.ndarray, b: np.ndarray, power: int,
              rtol: float = 1e-12, max_rounds: int = 40) -> float:
    """Sum over pieces, halving (geometrically on log pieces) those whose two halves do not
    reproduce the whole to ``rtol`` of the running total."""
    whole = _gauss_legendre(groups, a, b, power)
    done = 0.0
    for _ in range(max_rounds):
        if a.size == 0:
            break
        mid = np.where(a > 0, np.exp((np.log(np.where(a > 0, a, 1.0))
                                      + np.log(np.where(a > 0, b, 1.0))) / 2), (a + b) / 2)
        left = _gauss_legendre(groups, a, mid, power)
        right = _gauss_legendre(groups, mid, b, power)
        halves = left + right
        scale = abs(done + halves.sum())
        ok = np.abs(halves - whole) <= rtol * scale
        done += float(halves[ok].sum())
        a, mid, b = a[~ok], mid[~ok], b[~ok]
        a, b = np.concatenate([a, mid]), np.concatenate([mid, b])
        whole = np.concatenate([left[~ok], right[~ok]])
    return done + float(whole.sum())


def _power_tail(groups: Groups, x1: float, x2: float, power: int) -> float:
    """Integral past x2 of power x^(power-1) P(max > x), taking the tail as a power law
    fitted at x1, x2."""
    h1, h2 = _exceed(groups, np.array([x1, x2]))
    if not (h2 > 0 and h1 > h2 and x2 > x1 > 0):
        return 0.0
    beta = math.log(h1 / h2) / math.log(x2 / x1)
    return float(power * h2 * x2**power / (beta - power)) if beta > power else 0.0


def max_quantile(dist: DistOrGroups, *args: Any) -> Any:
    """The q-quantile of the max: ``ppf(q ** (1/n))`` for iid ranks (computed through the
    survival level when q ** (1/n) is near 1); for groups, the generalized inverse of
    prod F_i^n_i by exact bisection. Call as (dist, n, q) or (groups, q)."""
    groups, rest = _split(dist, args)
    if len(rest) != 1:
        raise ValueError("max_quantile takes (dist, n, q) or (groups, q)")
    q = np.asarray(rest[0], dtype=np.float64)
    if np.any(~((q >= 0) & (q <= 1))):
        raise ValueError(f"q must be in [0, 1], got {rest[0]!r}")
    if len(groups) == 1:
        d, c = groups[0]
        return _group_quantile(d, c, q)
    k = len(groups)
    lo = np.max([_group_quantile(d, c, q) for d, c in groups], axis=0)
    hi = np.max([_group_quantile(d, c, q ** (1.0 / k)) for d, c in groups], axis=0)
    with np.errstate(divide="ignore"):
        log_q = np.log(q)
    hi = np.where(log_cdf_max(groups, hi) >= log_q, hi, np.inf)
    x = smallest_true(lambda v: log_cdf_max(groups, v) >= log_q, lo, hi)
    return x[()] if x.ndim == 0 else x


def _group_quantile(d: Distribution, c: int, q: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        log_f = np.log(q) / c
    f = np.exp(log_f)
    body = np.asarray(d.ppf(np.where(f < 0.5, f, 0.25)), dtype=np.float64)
    tail = np.asarray(d.isf(np.where(f < 0.5, 0.25, -np.expm1(log_f))), dtype=np.float64)
    return np.where(f < 0.5, body, tail)


def prob_max_exceeds(dist: DistOrGroups, *args: Any) -> Any:
    """P(max > t) = 1 - prod F_i(t)^n_i, accurate far into the tail (where F(t) rounds to
    1 it is about sum n_i sf_i(t), not 0). Call as (dist, n, t) or (groups, t)."""
    groups, rest = _split(dist, args)
    if len(rest) != 1:
        raise ValueError("prob_max_exceeds takes (dist, n, t) or (groups, t)")
    p = _exceed(groups, rest[0])
    return p[()] if p.ndim == 0 else p


def sample_max(dist: DistOrGroups, *args: Any) -> np.ndarray:
    """``size`` draws of the max without drawing the n values (inverse CDF at U**(1/n);
    mixtures split n over their components with one multinomial draw, exact with atoms).
    Costs the same for n = 10**6 as for n = 2. Call as (dist, n, rng, size) or
    (groups, rng, size)."""
    groups, rest = _split(dist, args)
    if len(rest) != 2:
        raise ValueError("sample_max takes (dist, n, rng, size) or (groups, rng, size)")
    rng, size = rest
    out = None
    for d, c in groups:
        draw = d.sample_max(rng, np.full(size, c, dtype=np.int64))
        out = draw if out is None else np.maximum(out, draw)
    return out
