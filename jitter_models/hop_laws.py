"""Per-hop latency laws for paired network comparisons: each law is a transform of the
same two standard draws per message (Z ~ N(0, 1), V ~ U(0, 1)), so two networks given
the same draws are compared message by message (common random numbers): a message that
is slow on one network is slow on the other, and the difference of their step times has
far less Monte Carlo noise than two independent runs.

Every law is set by its mean (seconds) and its shape; all are increasing in Z:

- ``lognormal(mean, sigma)``: mean * exp(sigma Z - sigma^2 / 2); p99/p50 = exp(2.326 sigma).
- ``pareto(mean, shape, clip)``: x_m U^(-1/shape) with U = Phi(-Z), clipped at
  ``clip`` x x_m so that its mean is finite and its sample mean stable (a Pareto of shape
  1.5 has no variance); x_m = mean (shape - 1) / (shape - clip^(1 - shape)), the mean of
  the clipped law. p99/p50 = 50^(1/shape) while the p99 is under the clip.
- ``spikes(mean, sigma, p, factor)``: a narrow lognormal base b exp(sigma Z - sigma^2/2)
  plus, when V < p, a spike of ``factor`` x b (rare slow messages: a retransmission, a
  congested switch port); b = mean / (1 + p factor). With p above 1% the p99 is a spike.

``ratio_p99_p50`` is computed from 2**20 draws with a fixed seed (exact for lognormal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

Z99 = 2.3263478740408408  # the standard normal's 0.99 quantile
_CHECK_DRAWS = 1 << 20


@dataclass(frozen=True)
class HopLaw:
    """One per-hop latency law (module docstring)."""

    family: str
    mean_s: float
    sigma: float = 0.0
    shape: float = 0.0
    clip: float = 0.0
    p: float = 0.0
    factor: float = 0.0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family: unknown {self.family!r} (known: {', '.join(FAMILIES)})")
        if not (math.isfinite(self.mean_s) and self.mean_s > 0):
            raise ValueError(f"mean: must be a finite duration > 0, got {self.mean_s!r}")
        for name, ok in FAMILIES[self.family].items():
            if not ok(getattr(self, name)):
                raise ValueError(f"{name}: out of range for {self.family}, got "
                                 f"{getattr(self, name)!r}")

    def sample(self, z: np.ndarray, v: np.ndarray | None = None) -> np.ndarray:
        """Latencies (s) of messages with standard draws ``z`` (and ``v`` for spikes)."""
        if self.family == "lognormal":
            return self.mean_s * np.exp(self.sigma * z - 0.5 * self.sigma ** 2)
        if self.family == "pareto":
            xm = self.mean_s * (self.shape - 1) / (self.shape - self.clip ** (1 - self.shape))
            u = np.maximum(ndtr(-z), 1e-300)
            return xm * np.minimum(u ** (-1.0 / self.shape), self.clip)
        b = self.mean_s / (1 + self.p * self.factor)
        base = b * np.exp(self.sigma * z - 0.5 * self.sigma ** 2)
        return base + np.where(v < self.p, self.factor * b, 0.0)

    def ratio_p99_p50(self) -> float:
        """p99 / p50 of one hop's latency."""
        if self.family == "lognormal":
            return math.exp(Z99 * self.sigma)
        rng = np.random.default_rng(12345)
        x = self.sample(rng.standard_normal(_CHECK_DRAWS), rng.random(_CHECK_DRAWS))
        p50, p99 = np.quantile(x, [0.5, 0.99])
        return float(p99 / p50)

    def describe(self) -> str:
        m = f"mean {self.mean_s * 1e6:g} us"
        if self.family == "lognormal":
            return f"lognormal({m}, sigma {self.sigma:g})"
        if self.family == "pareto":
            xm = self.mean_s * (self.shape - 1) / (self.shape - self.clip ** (1 - self.shape))
            return (f"pareto({m}, shape {self.shape:g}, x_m {xm * 1e6:.3g} us, clipped at "
                    f"{self.clip:g} x_m = {self.clip * xm * 1e6:.3g} us)")
        return (f"spikes({m}, base sigma {self.sigma:g}, p {self.p:g}, spike "
                f"{self.factor:g} x base)")


FAMILIES = {
    "lognormal": {"sigma": lambda s: math.isfinite(s) and s >= 0},
    "pareto": {"shape": lambda a: math.isfinite(a) and a > 1,
               "clip": lambda c: math.isfinite(c) and c > 1},
    "spikes": {"sigma": lambda s: math.isfinite(s) and s >= 0,
               "p": lambda p: 0 < p < 1, "factor": lambda f: math.isfinite(f) and f > 0},
}


def lognormal_sigma_for_ratio(ratio: float) -> float:
    """The lognormal sigma whose p99/p50 is ``ratio`` (>= 1)."""
    return math.log(ratio) / Z99
