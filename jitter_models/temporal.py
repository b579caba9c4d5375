"""Temporal structure of one stream of delays: iid, AR(1) Gaussian copula, bursty.

Each model acts on the flattened (step, site) sequence of one stream (one rank, node or
the whole job, by the schedule's scope) and keeps the schedule's distribution as the
law of each delay (``bursty`` replaces it inside bursts: its marginal is a mixture).
Noise that lives on the run's own clock (periodic detours, trace replay) is not a sequence
model: it is a schedule's ``detours`` (``detours.py``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from scipy import signal, special

from .composite import Mixture
from .distributions import Distribution, parse
from .syntax import Call, Param, kwargs_from_call, kwargs_from_table, parse_call

TEMPORALS: dict[str, type[Temporal]] = {}


def _register(cls: type[Temporal]) -> type[Temporal]:
    TEMPORALS[cls.kind] = cls
    return cls


class Temporal(ABC):
    """Structure in time of one stream of delays whose marginal is a given distribution."""

    kind: ClassVar[str]
    params: ClassVar[tuple[Param, ...]] = ()

    @abstractmethod
    def draw(self, dist: Distribution, rng: np.random.Generator, length: int) -> np.ndarray:
        """``length`` consecutive delays."""

    def marginal(self, dist: Distribution) -> Distribution:
        """The law of any one delay of the stream."""
        return dist

    def __str__(self) -> str:
        if not self.params:
            return self.kind
        args = ", ".join(f"{p.name}={_fmt(getattr(self, p.attr), p)}" for p in self.params)
        return f"{self.kind}({args})"


def _fmt(value: Any, p: Param) -> str:
    return repr(float(value)) if p.kind == "number" else str(value)


@_register
@dataclass(frozen=True)
class IID(Temporal):
    """Independent draws."""

    kind: ClassVar[str] = "iid"

    def draw(self, dist: Distribution, rng: np.random.Generator, length: int) -> np.ndarray:
        return dist.sample(rng, length)


@_register
@dataclass(frozen=True, kw_only=True)
class AR1(Temporal):
    """Gaussian copula: a stationary latent AR(1) z_t = rho z_{t-1} + sqrt(1-rho^2) e_t over
    the collectives of one stream (the flattened (step, site) sequence), mapped through Phi
    and the distribution's inverse CDF, so the marginal is exactly the distribution.
    ``rho`` is the lag-1 correlation of the latent normal, not of the delays."""

    kind: ClassVar[str] = "ar1"
    params: ClassVar[tuple[Param, ...]] = (Param("rho", "number"),)
    rho: float
    """Latent normal lag-1 correlation, in (-1, 1)."""

    def __post_init__(self) -> None:
        if isinstance(self.rho, bool) or not -1 < float(self.rho) < 1:
            raise ValueError(f"ar1: rho: must be in (-1, 1), got {self.rho!r}")
        object.__setattr__(self, "rho", float(self.rho))

    def draw(self, dist: Distribution, rng: np.random.Generator, length: int) -> np.ndarray:
        z_prev = rng.standard_normal()  # stationary start: z_{-1} ~ N(0, 1)
        eps = rng.standard_normal(length)
        c = math.sqrt(1.0 - self.rho**2)
        z = signal.lfilter([c], [1.0, -self.rho], eps, zi=[self.rho * z_prev])[0]
        # Lower half through ppf, upper half through isf: both tails keep full precision.
        out = np.empty(length)
        low = z < 0
        out[low] = dist.ppf(special.ndtr(z[low]))
        out[~low] = dist.isf(special.ndtr(-z[~low]))
        return out


@_register
@dataclass(frozen=True, kw_only=True)
class Bursty(Temporal):
    """A stationary two-state Markov chain over the collectives of one stream (the
    flattened (step, site) sequence): in the calm state a delay is drawn from the
    schedule's distribution, in a burst from ``burst`` instead. Calm -> burst with
    probability ``p_enter`` per collective, burst -> calm with ``p_exit``; the marginal is
    the mixture pi*burst + (1-pi)*dist with pi = p_enter / (p_enter + p_exit)."""

    kind: ClassVar[str] = "bursty"
    params: ClassVar[tuple[Param, ...]] = (
        Param("p_enter", "number"), Param("p_exit", "number"), Param("burst", "dist"))
    p_enter: float
    """Probability per collective of entering a burst, in (0, 1]."""
    p_exit: float
    """Probability per collective of leaving a burst, in (0, 1]."""
    burst: Distribution
    """The delay distribution inside a burst."""

    def __post_init__(self) -> None:
        for name in ("p_enter", "p_exit"):
            v = getattr(self, name)
            if isinstance(v, bool) or not 0 < float(v) <= 1:
                raise ValueError(f"bursty: {name}: must be in (0, 1], got {v!r}")
            object.__setattr__(self, name, float(v))
        if not isinstance(self.burst, Distribution):
            raise ValueError(f"bursty: burst: not a distribution: {self.burst!r}")

    @property
    def burst_fraction(self) -> float:
        return self.p_enter / (self.p_enter + self.p_exit)

    def states(self, rng: np.random.Generator, length: int) -> np.ndarray:
        """Boolean burst indicator per position (stationary start; runs are geometric)."""
        first = bool(rng.random() < self.burst_fraction)
        p_first, p_second = (self.p_exit, self.p_enter) if first else (self.p_enter, self.p_exit)
        runs = np.empty(0, dtype=np.int64)
        pairs = 64  # fixed chunks: a longer sequence extends a shorter one (prefix-stable)
        while runs.sum() < length:
            chunk = np.empty(2 * pairs, dtype=np.int64)
            chunk[0::2] = rng.geometric(p_first, pairs)
            chunk[1::2] = rng.geometric(p_second, pairs)
            runs = np.concatenate([runs, chunk])
        # Cut the last run short so the expansion costs `length`, however long the runs.
        ends = np.cumsum(runs)
        k = int(np.searchsorted(ends, length)) + 1 if length else 0
        runs = runs[:k]
        if k:
            runs[-1] -= ends[k - 1] - length
        labels = np.resize(np.array([first, not first]), runs.size)
        return np.repeat(labels, runs)

    def draw(self, dist: Distribution, rng: np.random.Generator, length: int) -> np.ndarray:
        """Prefix-stable (the states, the calm and the burst values from streams of their
        own, burst values drawn at every position): a link's k-th message gets the same
        delay however many messages follow."""
        seeds = rng.integers(0, 2**63, 3)
        burst = self.states(np.random.default_rng(seeds[0]), length)
        out = dist.sample(np.random.default_rng(seeds[1]), length)
        if burst.any():
            out[burst] = self.burst.sample(np.random.default_rng(seeds[2]), length)[burst]
        return out

    def marginal(self, dist: Distribution) -> Distribution:
        pi = self.burst_fraction
        if pi >= 1.0:
            return self.burst
        return Mixture(components=((1.0 - pi, dist), (pi, self.burst)))


def parse_temporal(spec: str | Mapping[str, Any] | Call | Temporal) -> Temporal:
    """``"iid"``, ``"ar1(rho=0.9)"``, ``"bursty(p_enter=0.01, p_exit=0.2,
    burst=constant(2ms))"``, or a table ``{kind = "ar1", rho = 0.9}``."""
    if isinstance(spec, Temporal):
        return spec
    if isinstance(spec, str):
        spec = parse_call(spec)
    if isinstance(spec, Call):
        cls = _temporal_kind(spec.name)
        return cls(**kwargs_from_call(cls.kind, cls.params, spec, parse))
    if isinstance(spec, Mapping):
        cls = _temporal_kind(spec.get("kind"))
        return cls(**kwargs_from_table(cls.kind, cls.params, spec, parse, skip=("kind",)))
    raise ValueError(f"jitter: temporal: expected text or a table, got {spec!r}")


def _temporal_kind(name: Any) -> type[Temporal]:
    if name not in TEMPORALS:
        known = ", ".join(sorted(TEMPORALS))
        raise ValueError(f"jitter: temporal: unknown kind {name!r} (known: {known})")
    return TEMPORALS[name]
