"""Maximum-likelihood fitters for the positive delay families (``jitterlab fit``).

A ``Fitter`` knows one family in the distribution syntax: its parameters, its maximum
likelihood estimate from samples (seconds, all > 0), its log density, CDF and sampler at
given parameters, and the distribution text ``jitter_models.parse`` reads back (at least
six significant digits). ``FITTERS`` is the registry: adding a family is one entry here
(with its test in tests/test_fitters.py); ``shifted(f)`` wraps any of them with a latency
floor.

The estimates (n samples x_i):

- exponential: mean = the sample mean (closed form).
- lognormal: median = exp(mean log x), sigma = std log x (closed form, ddof 0).
- gamma: mean = the sample mean; the shape k solves log k - digamma(k) = log mean - mean
  log x (Newton from Minka's starting point; the log-likelihood is concave in k).
- weibull: the shape c solves sum x^c log x / sum x^c - 1/c = mean log x (Newton on the
  samples scaled by their median, bracketed), scale = (mean x^c)^(1/c).
- pareto (classical): scale = the smallest sample, alpha = n / sum log(x / scale)
  (closed form).
- shifted(f): the floor ``shift`` maximizes the profile log-likelihood (f's estimate of
  x - shift at each shift; bounded Brent) over 0 <= shift <= x_(1) - g, where g is the
  gap from the smallest sample to the next distinct one: the shift stays below the
  smallest sample (the constraint), and for a shifted exponential, whose likelihood rises
  all the way to x_(1), it lands at about x_(1) - mean / n, where the floor's unbiased
  estimate is.
- mixture: two lognormal components (the base and the spikes), a Gaussian mixture in log
  x fitted by expectation-maximization (SQUAREM-accelerated) from a start with 5% in the
  upper tail (or from a given estimate: the bootstrap's refits), until an iteration gains
  less than 1e-8 per sample in log-likelihood (or 300 iterations); the spike component is
  the one with the larger median.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

from .units import format_duration

Params = dict[str, float]
_LOG_2PI = math.log(2 * math.pi)


def _dur(seconds: float) -> str:
    """A duration with at least 6 significant digits that ``parse`` reads back."""
    return format_duration(float(f"{seconds:.9g}"))


def _num(x: float) -> str:
    return f"{x:.9g}"


@dataclass(frozen=True)
class Fitter:
    """One family: ``names`` of its parameters (durations in seconds: ``durations``), the
    estimate, the log density, the CDF, the sampler and the distribution text."""

    family: str
    names: tuple[str, ...]
    durations: frozenset[str]
    mle: Callable[..., Params]
    """``mle(x)``, or ``mle(x, start)`` from a nearby estimate (only EM uses it)."""
    logpdf: Callable[[np.ndarray, Params], np.ndarray]
    cdf: Callable[[np.ndarray, Params], np.ndarray]
    sample: Callable[[np.random.Generator, Params, int], np.ndarray]
    text: Callable[[Params], str]

    @property
    def n_params(self) -> int:
        return len(self.names)


# --- exponential -----------------------------------------------------------------------

def _exp_mle(x: np.ndarray, start: Params | None = None) -> Params:
    return {"mean": float(x.mean())}


EXPONENTIAL = Fitter(
    "exponential", ("mean",), frozenset({"mean"}), _exp_mle,
    lambda x, p: -math.log(p["mean"]) - x / p["mean"],
    lambda x, p: -np.expm1(-x / p["mean"]),
    lambda rng, p, n: rng.exponential(p["mean"], n),
    lambda p: f"exponential({_dur(p['mean'])})")


# --- lognormal -------------------------------------------------------------------------

def _logn_mle(x: np.ndarray, start: Params | None = None) -> Params:
    y = np.log(x)
    return {"median": float(math.exp(y.mean())), "sigma": max(float(y.std()), 1e-12)}


def _logn_logpdf(x: np.ndarray, p: Params) -> np.ndarray:
    s = p["sigma"]
    y = np.log(x)
    return -y - math.log(s) - 0.5 * _LOG_2PI - 0.5 * ((y - math.log(p["median"])) / s) ** 2


LOGNORMAL = Fitter(
    "lognormal", ("median", "sigma"), frozenset({"median"}), _logn_mle, _logn_logpdf,
    lambda x, p: special.ndtr((np.log(x) - math.log(p["median"])) / p["sigma"]),
    lambda rng, p, n: p["median"] * np.exp(p["sigma"] * rng.standard_normal(n)),
    lambda p: f"lognormal(median={_dur(p['median'])}, sigma={_num(p['sigma'])})")


# --- gamma -----------------------------------------------------------------------------

def _gamma_shape(s: float) -> float:
    """The k with log k - digamma(k) = s (> 0)."""
    if not s > 0:
        return 1e6  # all samples equal: as narrow as a gamma gets here
    k = (3 - s + math.sqrt((s - 3) ** 2 + 24 * s)) / (12 * s)
    for _ in range(50):
        f = math.log(k) - special.digamma(k) - s
        step = f / (1 / k - special.polygamma(1, k))
        k_new = k - step
        if k_new <= 0:
            k_new = k / 2
        if abs(k_new - k) <= 1e-12 * k:
            return k_new
        k = k_new
    return k


def _gamma_mle(x: np.ndarray, start: Params | None = None) -> Params:
    m = float(x.mean())
    return {"shape": _gamma_shape(math.log(m) - float(np.log(x).mean())), "mean": m}


def _gamma_logpdf(x: np.ndarray, p: Params) -> np.ndarray:
    k, theta = p["shape"], p["mean"] / p["shape"]
    return (k - 1) * np.log(x) - x / theta - special.gammaln(k) - k * math.log(theta)


GAMMA = Fitter(
    "gamma", ("shape", "mean"), frozenset({"mean"}), _gamma_mle, _gamma_logpdf,
    lambda x, p: special.gammainc(p["shape"], x * p["shape"] / p["mean"]),
    lambda rng, p, n: rng.gamma(p["shape"], p["mean"] / p["shape"], n),
    lambda p: f"gamma(shape={_num(p['shape'])}, mean={_dur(p['mean'])})")


# --- weibull ---------------------------------------------------------------------------

def _weibull_mle(x: np.ndarray, start: Params | None = None) -> Params:
    scale0 = float(np.median(x))
    z = x / scale0
    lz = np.log(z)
    mean_lz = float(lz.mean())

    def g(c: float) -> float:
        w = np.exp(c * lz - (c * lz).max())  # z^c, scaled: the ratio is unchanged
        return float((w * lz).sum() / w.sum()) - 1 / c - mean_lz

    lo, hi = 1e-3, 1.0
    while g(hi) < 0 and hi < 1e4:  # g increases in c
        lo, hi = hi, hi * 2
    c = optimize.brentq(g, lo, hi, xtol=1e-12, rtol=1e-10) if g(hi) >= 0 else hi
    m = c * lz
    top = m.max()
    scale = scale0 * math.exp((top + math.log(np.exp(m - top).mean())) / c)
    return {"shape": float(c), "scale": float(scale)}


def _weibull_logpdf(x: np.ndarray, p: Params) -> np.ndarray:
    c, lam = p["shape"], p["scale"]
    z = x / lam
    return math.log(c / lam) + (c - 1) * np.log(z) - z ** c


WEIBULL = Fitter(
    "weibull", ("shape", "scale"), frozenset({"scale"}), _weibull_mle, _weibull_logpdf,
    lambda x, p: -np.expm1(-(x / p["scale"]) ** p["shape"]),
    lambda rng, p, n: p["scale"] * rng.weibull(p["shape"], n),
    lambda p: f"weibull(shape={_num(p['shape'])}, scale={_dur(p['scale'])})")


# --- pareto (classical) ------------------------------------------------------------------

def _pareto_mle(x: np.ndarray, start: Params | None = None) -> Params:
    scale = float(x.min())
    total = float(np.log(x / scale).sum())
    return {"alpha": x.size / total if total > 0 else 1e6, "scale": scale}


def _pareto_logpdf(x: np.ndarray, p: Params) -> np.ndarray:
    a, s = p["alpha"], p["scale"]
    with np.errstate(divide="ignore"):
        return np.where(x >= s, math.log(a) + a * math.log(s) - (a + 1) * np.log(x), -np.inf)


PARETO = Fitter(
    "pareto", ("alpha", "scale"), frozenset({"scale"}), _pareto_mle, _pareto_logpdf,
    lambda x, p: np.where(x >= p["scale"], -np.expm1(p["alpha"] * np.log(
        p["scale"] / np.maximum(x, p["scale"]))), 0.0),
    lambda rng, p, n: (rng.pareto(p["alpha"], n) + 1.0) * p["scale"],
    lambda p: f"pareto(alpha={_num(p['alpha'])}, scale={_dur(p['scale'])})")


# --- shifted(f) --------------------------------------------------------------------------

def _base(p: Params) -> Params:
    return {k: v for k, v in p.items() if k != "shift"}


def shift_bound(x: np.ndarray) -> float:
    """The largest floor allowed: the smallest sample less the gap to the next distinct
    one (0 when all samples are equal)."""
    lo = float(x.min())
    above = x[x > lo]
    return max(0.0, lo - (float(above.min()) - lo)) if above.size else 0.0


def shifted(f: Fitter) -> Fitter:
    """``f`` above a fitted floor ``shift`` (module docstring)."""

    def mle(x: np.ndarray, start: Params | None = None) -> Params:
        top = shift_bound(x)

        def minus_ll(shift: float) -> float:
            y = x - shift
            return -float(f.logpdf(y, f.mle(y)).sum())

        if top <= 0:
            best = 0.0
        else:
            res = optimize.minimize_scalar(minus_ll, bounds=(0.0, top), method="bounded",
                                           options={"xatol": top * 1e-7})
            best = float(res.x)
            for edge in (0.0, top):  # the bounded search stops short of the ends
                if minus_ll(edge) < minus_ll(best):
                    best = edge
        return {"shift": best, **f.mle(x - best)}

    return Fitter(
        f"shifted({f.family})", ("shift", *f.names), f.durations | {"shift"}, mle,
        lambda x, p: f.logpdf(x - p["shift"], _base(p)),
        lambda x, p: f.cdf(np.maximum(x - p["shift"], 0.0), _base(p)),
        lambda rng, p, n: p["shift"] + f.sample(rng, _base(p), n),
        lambda p: f"shifted(offset={_dur(p['shift'])}, dist={f.text(_base(p))})")


# --- the two-lognormal spike mixture -----------------------------------------------------

_MIX_NAMES = ("weight", "median", "sigma", "spike_median", "spike_sigma")


def _norm_logpdf(y: np.ndarray, mu: float, s: float) -> np.ndarray:
    return -math.log(s) - 0.5 * _LOG_2PI - 0.5 * ((y - mu) / s) ** 2


def _em_step(y: np.ndarray, th: np.ndarray, floor: float) -> tuple[np.ndarray, float]:
    """One EM step of the two-Gaussian mixture of ``y`` at th = (logit w, mu0, mu1,
    log sd0, log sd1): the next th and the log-likelihood at th."""
    n = y.size
    w = 1 / (1 + math.exp(-th[0]))
    a = math.log1p(-w) + _norm_logpdf(y, th[1], math.exp(th[3]))
    b = math.log(w) + _norm_logpdf(y, th[2], math.exp(th[4]))
    top = np.maximum(a, b)
    ll_i = top + np.log(np.exp(a - top) + np.exp(b - top))
    r = np.exp(b - ll_i)  # each sample's responsibility of the spike component
    rs = min(max(float(r.sum()), 1e-9 * n), n * (1 - 1e-9))
    mu0 = float(((1 - r) * y).sum() / (n - rs))
    mu1 = float((r * y).sum() / rs)
    sd0 = max(math.sqrt(float(((1 - r) * (y - mu0) ** 2).sum() / (n - rs))), floor)
    sd1 = max(math.sqrt(float((r * (y - mu1) ** 2).sum() / rs)), floor)
    return (np.array([math.log(rs / (n - rs)), mu0, mu1, math.log(sd0), math.log(sd1)]),
            float(ll_i.sum()))


def _mixture_mle(x: np.ndarray, start: Params | None = None) -> Params:
    """EM with SQUAREM's extrapolation (Varadhan and Roland 2008: two EM steps give a
    direction, a step along it, then one EM step; kept only if the likelihood does not
    fall), which needs a tenth of plain EM's steps where the components overlap."""
    y = np.log(x)
    n = y.size
    floor = max(float(y.std()) * 1e-3, 1e-9)
    if start is not None:
        w = min(max(start["weight"], 1e-6), 1 - 1e-6)
        th = np.array([math.log(w / (1 - w)), math.log(start["median"]),
                       math.log(start["spike_median"]), math.log(max(start["sigma"], floor)),
                       math.log(max(start["spike_sigma"], floor))])
    else:
        cut = float(np.quantile(y, 0.95))
        hi = y > cut
        if not hi.any() or hi.all():  # (nearly) all samples equal
            p = _logn_mle(x)
            return {"weight": 1e-9, "median": p["median"], "sigma": p["sigma"],
                    "spike_median": p["median"], "spike_sigma": p["sigma"]}
        w = float(hi.mean())
        th = np.array([math.log(w / (1 - w)), float(y[~hi].mean()), float(y[hi].mean()),
                       math.log(max(float(y[~hi].std()), floor)),
                       math.log(max(float(y[hi].std()), floor))])
    ll = -math.inf
    for _ in range(300):
        th1, ll0 = _em_step(y, th, floor)
        th2, _ = _em_step(y, th1, floor)
        r, v = th1 - th, th2 - 2 * th1 + th
        nv = float(np.sqrt((v * v).sum()))
        alpha = -float(np.sqrt((r * r).sum())) / nv if nv > 0 else -1.0
        alpha = min(alpha, -1.0)
        trial = th - 2 * alpha * r + alpha * alpha * v
        try:
            new, ll_trial = _em_step(y, trial, floor)
            ok = math.isfinite(ll_trial) and ll_trial >= ll0
        except (ValueError, OverflowError, FloatingPointError):
            ok = False
        th = new if ok else th2
        if ll0 - ll < 1e-8 * n:
            break
        ll = ll0
    w, mu, sd = 1 / (1 + math.exp(-th[0])), [th[1], th[2]], [math.exp(th[3]), math.exp(th[4])]
    if mu[1] < mu[0]:  # the spikes are the slower component
        w, mu, sd = 1 - w, mu[::-1], sd[::-1]
    return {"weight": w, "median": math.exp(mu[0]), "sigma": sd[0],
            "spike_median": math.exp(mu[1]), "spike_sigma": sd[1]}


def _mixture_logpdf(x: np.ndarray, p: Params) -> np.ndarray:
    y = np.log(x)
    a = math.log1p(-p["weight"]) + _norm_logpdf(y, math.log(p["median"]), p["sigma"])
    b = math.log(p["weight"]) + _norm_logpdf(y, math.log(p["spike_median"]), p["spike_sigma"])
    top = np.maximum(a, b)
    return top + np.log(np.exp(a - top) + np.exp(b - top)) - y


def _mixture_cdf(x: np.ndarray, p: Params) -> np.ndarray:
    y = np.log(x)
    return ((1 - p["weight"]) * special.ndtr((y - math.log(p["median"])) / p["sigma"])
            + p["weight"] * special.ndtr((y - math.log(p["spike_median"])) / p["spike_sigma"]))


def _mixture_sample(rng: np.random.Generator, p: Params, n: int) -> np.ndarray:
    spike = rng.random(n) < p["weight"]
    z = rng.standard_normal(n)
    return np.where(spike, p["spike_median"] * np.exp(p["spike_sigma"] * z),
                    p["median"] * np.exp(p["sigma"] * z))


def _mixture_text(p: Params) -> str:
    w = float(_num(p["weight"]))
    base = {"median": p["median"], "sigma": p["sigma"]}
    spike = {"median": p["spike_median"], "sigma": p["spike_sigma"]}
    return (f"mixture({_num(1 - w)}*{LOGNORMAL.text(base)}, "
            f"{_num(w)}*{LOGNORMAL.text(spike)})")


MIXTURE = Fitter("mixture", _MIX_NAMES, frozenset({"median", "spike_median"}), _mixture_mle,
                 _mixture_logpdf, _mixture_cdf, _mixture_sample, _mixture_text)


FITTERS: Mapping[str, Fitter] = {f.family: f for f in (
    EXPONENTIAL, GAMMA, LOGNORMAL, WEIBULL, PARETO,
    shifted(EXPONENTIAL), shifted(GAMMA), shifted(LOGNORMAL), shifted(WEIBULL), MIXTURE)}
"""Every candidate ``jitterlab fit`` tries, by its family text."""
