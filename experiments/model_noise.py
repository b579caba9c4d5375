"""The model's baseline noise: the host's own noise, measured on the no-jitter points,
carried onto simulated steps on the time axis (``experiments.model`` uses it).

The no-jitter steps' excesses over their median are each the noise of one window (that
point's mean step). A simulated step k windows long holds k of them
(:func:`windowed_noise`), counting of the time a schedule adds only the share the
injector spins (:func:`spun_share`, :func:`sleep_margin_s`): the host's stalls hit a
running rank, not a sleeping one.
"""

from __future__ import annotations

import numpy as np

from jitter_models import Schedule


def balanced_resample(values: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` values drawn from ``values`` without replacement, in successive random
    permutations: each value is used equally often (up to the last, partial permutation).
    A plain bootstrap's sample mean wanders by sd / sqrt(size), hundreds of µs when the
    baseline noise holds a few 100 ms stalls; here only the last permutation's part does."""
    if values.size == 0:
        return np.zeros(size)
    reps = -(-size // values.size)
    order = np.concatenate([rng.permutation(values.size) for _ in range(reps)])
    return values[order[:size]]


def sleep_margin_s(injector: str | None) -> float | None:
    """How much of a delay the points' injector spins (seconds; None: all of it). The host
    injector sleeps all but its last ``sleep_margin_ns``, or, with more ranks than cores,
    sleeps all of it (its name then says "sleep only"); a summary written before the
    injector was kept is taken as the plain host injector."""
    from collectives.inject import SLEEP_ONLY, HostInjector

    if injector is None or injector.startswith("host"):
        return 0.0 if SLEEP_ONLY in (injector or "") else HostInjector().sleep_margin_ns * 1e-9
    return None  # cuda spins on the device, none injects nothing


def spun_share(schedule: Schedule, margin_s: float | None, draws: int = 4096) -> float:
    """The share of the schedule's injected delay that is spun rather than slept, for an
    injector that spins the last ``margin_s`` of each delay (None: all of it): E[min(D,
    margin)] / E[D] for the slower of the delay law and the stragglers' (their marginals;
    Monte Carlo, fixed seed). The host's stalls hit a running rank; a sleeping one does
    not see them."""
    if margin_s is None:
        return 1.0
    laws = [schedule.dist] + ([schedule.stragglers.dist] if schedule.stragglers else [])
    d = max((np.asarray(schedule.temporal.marginal(law).sample(
        np.random.default_rng(11), draws), dtype=np.float64) for law in laws),
        key=lambda x: float(np.mean(x)))
    mean = float(np.mean(d))
    return float(np.mean(np.minimum(d, margin_s)) / mean) if mean > 0 else 1.0


def windowed_noise(excess: np.ndarray, window_s: float, latency_s: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    """The baseline noise of simulated steps of ``latency_s``, from the no-jitter steps'
    ``excess`` over their median (each the noise of one window of ``window_s``, that
    point's mean step; the median step is taken as noise-free). The host's noise is on the
    time axis: a step k windows long holds the sum of k excesses (floor(k), and one more
    with probability k - floor(k)), drawn in balanced permutations, less one window's mean
    excess, which the fitted compute and collective already hold. A step as long as the
    window gets the no-jitter point's own deviations from its mean; a step five times
    longer is five times as likely to hold one of the host's stalls, and holds five times
    its mean noise."""
    if excess.size == 0:
        return np.zeros(np.shape(latency_s))
    k = np.maximum(np.asarray(latency_s, dtype=np.float64), 0.0) / max(window_s, 1e-12)
    counts = np.floor(k).astype(np.int64)
    counts += rng.random(k.size) < (k - counts)
    draws = balanced_resample(excess, int(counts.sum()), rng)
    return np.bincount(np.repeat(np.arange(k.size), counts), weights=draws,
                       minlength=k.size) - float(np.mean(excess))
