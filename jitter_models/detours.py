"""Detours: time-axis noise. A detour preempts a rank for a while (a daemon, an interrupt,
a kernel thread), whatever the rank was doing.

Semantics, the same on real ranks (``collectives.timing``) and in the simulator:

- A rank's detours are a fixed pattern of intervals ``[start, start + duration)`` inside
  one period, repeated forever. Each rank enters the pattern at its own phase: an offset
  drawn uniformly in ``[0, period)`` from the rank's own stream (seed, rank), never from
  the world size; ``phase = aligned`` gives every rank offset 0 (co-scheduled noise). At
  time ``t`` (seconds since the point's first barrier) a rank is at position
  ``(t + offset) mod period`` of its pattern.
- Work (compute, and the delay a schedule injects) pauses for the overlap with a detour:
  ``end(t, work)`` is the earliest time by which ``work`` seconds of non-detour time have
  passed since ``t``. A rank inside a detour when its work starts begins when the detour
  ends, even with no work (``end(t, 0)``).
- Waiting inside a collective is not extended: a detour that falls while the rank waits
  for its peers costs nothing.

``periodic(period=10ms, duration=250us, phase=random)`` is one detour at the start of each
period. ``trace(path)`` replays a file of ``start_ns<TAB>duration_ns`` lines (LogGOPSim's
noise-trace format; ``#`` comments, lines in any order) with period ``trace(path,
period=...)`` or, without one, the latest end of a line (a zero-length line may mark it);
overlapping or touching detours are merged, and a detour that ends the period runs on
into one that starts it.
"""

from __future__ import annotations

import bisect
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from .detour_trace import merge, read_trace
from .errors import BadInput
from .syntax import Call, Param, Text, Word, check_printable, parse_call
from .units import MAX_DELAY_S, format_duration, parse_duration

Phase = Literal["random", "aligned"]
PHASES: tuple[str, ...] = ("random", "aligned")
_DETOUR_STREAM = 5  # after stragglers' _BASE .. _LINK_STRAGGLER (0 .. 4)

DETOURS: dict[str, type[Detours]] = {}


def _register(cls: type[Detours]) -> type[Detours]:
    DETOURS[cls.kind] = cls
    return cls


def _hidden() -> Any:
    return field(default=None, init=False, repr=False, compare=False)


@dataclass(frozen=True, kw_only=True)
class Detours(ABC):
    """A pattern of detours in one period, entered by each rank at its own phase."""

    kind: ClassVar[str]
    params: ClassVar[tuple[Param, ...]]
    phase: Phase = "random"
    """random: each rank's offset uniform in the period from its own stream; aligned: 0."""
    _starts: Any = _hidden()
    _ends: Any = _hidden()
    _busy: Any = _hidden()
    _bounds: Any = _hidden()
    _work_at_start: Any = _hidden()

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise BadInput(f"detours: phase: must be one of {', '.join(PHASES)}, "
                           f"got {self.phase!r}")
        starts, durations = self._pattern()
        ends = starts + durations
        if starts.size and (ends[-1] > self.period_s * (1 + 1e-12)):
            raise BadInput(f"detours: period: must be at least the last detour's end "
                           f"({format_duration(ends[-1])}), got "
                           f"{format_duration(self.period_s)}")
        if starts.size and float(np.sum(durations)) >= self.period_s * (1 - 1e-12):
            raise BadInput("detours: the detours fill the whole period: no work could "
                           "ever be done")
        ends = np.minimum(ends, self.period_s)
        busy = np.concatenate([[0.0], np.cumsum(ends - starts)])  # detour time before each
        object.__setattr__(self, "_starts", starts)
        object.__setattr__(self, "_ends", ends)
        object.__setattr__(self, "_busy", busy)
        object.__setattr__(self, "_bounds", (tuple(float(v) for v in self._starts),
                                             tuple(float(v) for v in self._ends)))
        object.__setattr__(self, "_work_at_start", starts - busy[:-1])

    @property
    @abstractmethod
    def period_s(self) -> float: ...

    @abstractmethod
    def _pattern(self) -> tuple[np.ndarray, np.ndarray]:
        """(starts, durations) in seconds, sorted, disjoint, inside [0, period)."""

    @property
    def busy_fraction(self) -> float:
        """The net noise: the fraction of time a rank spends in detours."""
        return float(self._busy[-1] / self.period_s)

    def offsets(self, seed: int, ranks: Any) -> np.ndarray:
        """Each rank's offset into the pattern, seconds: uniform in [0, period) from the
        stream (seed, rank), or 0 for aligned phases."""
        ranks = np.atleast_1d(np.asarray(ranks, dtype=np.int64))
        if self.phase == "aligned":
            return np.zeros(ranks.shape)
        out = np.empty(ranks.shape)
        for i, r in enumerate(ranks.ravel()):
            rng = np.random.default_rng(np.random.SeedSequence([seed, _DETOUR_STREAM, int(r)]))
            out.flat[i] = rng.random() * self.period_s
        return out

    def random_offsets(self, rng: np.random.Generator, size: Any) -> np.ndarray:
        """Offsets for ranks that have no stream of their own (the simulator's bulk draws
        past its rank-by-rank cutoff): the same law as :meth:`offsets`."""
        if self.phase == "aligned":
            return np.zeros(size)
        return rng.random(size) * self.period_s

    def end(self, t_s: Any, work_s: Any, offset_s: Any) -> np.ndarray:
        """The time at which ``work_s`` of work started at ``t_s`` is done on a rank with
        ``offset_s`` (broadcast arrays, seconds). Work pauses during detours; a start
        inside a detour waits for its end, even for zero work."""
        t = np.asarray(t_s, dtype=np.float64)
        w = np.asarray(work_s, dtype=np.float64)
        offset = np.asarray(offset_s, dtype=np.float64)
        if self._starts.size == 0:
            shape = np.broadcast_shapes(t.shape, w.shape, offset.shape)
            return np.broadcast_to(t + w, shape).copy()
        period, busy = self.period_s, self._busy
        x = t + offset  # position on the pattern's own time axis
        cycle = np.floor(x / period)
        cycle, pos = self._past_detour(cycle, x - cycle * period)
        # Work done since the period's start, at pos: pos minus the detours before it.
        work_clock = pos - busy[np.searchsorted(self._ends, pos, side="right")]
        per_period = period - busy[-1]
        target = work_clock + w
        extra = np.floor(target / per_period)
        extra = np.where(target - extra * per_period <= 0, extra - 1, extra)  # exact ends
        rest = target - extra * per_period
        # The position where the rest is reached: past every detour whose work clock at
        # its start is strictly below it (work ending at a detour's start ends there).
        k = np.searchsorted(self._work_at_start, rest, side="left")
        end = (cycle + extra) * period + rest + busy[k] - offset
        started = (cycle * period + pos) - offset
        return np.where(w > 0, np.maximum(end, started), started)

    def clear(self, t_s: float, work_s: float, offset_s: float) -> bool:
        """True when work started at ``t_s`` neither starts inside a detour nor reaches the
        next detour's start: then ``end`` is exactly ``t_s + work_s``. Plain floats, no
        numpy (about a microsecond): a real rank asks this at every site and calls the
        vectorized ``end`` only when it is False."""
        starts, ends = self._bounds
        if not starts:
            return True
        period = self.period_s
        x = (t_s + offset_s) % period
        i = bisect.bisect_right(starts, x) - 1
        if i >= 0 and x < ends[i]:
            return False
        following = starts[i + 1] if i + 1 < len(starts) else starts[0] + period
        return x + work_s < following

    def free_time(self, pos_s: Any, length_s: Any) -> np.ndarray:
        """Time outside detours in ``[pos, pos + length)`` of the pattern's own axis
        (positions in seconds, any real number; broadcast arrays): ``end(t, w, offset)
        - t <= length`` exactly when ``w <= free_time(t + offset, length)`` for w > 0."""
        return self._work_clock(np.asarray(pos_s, dtype=np.float64)
                                + np.asarray(length_s, dtype=np.float64)) \
            - self._work_clock(np.asarray(pos_s, dtype=np.float64))

    @property
    def count(self) -> int:
        """Detours in one period."""
        return int(self._starts.size)

    def lag_survival(self, work_s: float) -> tuple[np.ndarray, np.ndarray]:
        """The exact law of one rank's lag at a uniform position for a fixed amount of
        work (``detour_lag.lag_survival``)."""
        from .detour_lag import lag_survival

        return lag_survival(self, work_s)

    def _work_clock(self, y: np.ndarray) -> np.ndarray:
        """Time outside detours in [0, y) on the pattern's axis."""
        period = self.period_s
        cycle = np.floor(y / period)
        pos = y - cycle * period
        i = np.searchsorted(self._starts, pos, side="right") - 1
        j = np.maximum(i, 0)
        inside = np.where(i >= 0, np.clip(pos - self._starts[j], 0.0,
                                          self._ends[j] - self._starts[j]), 0.0)
        busy = np.where(i >= 0, self._busy[j], 0.0) + inside
        return cycle * (period - self._busy[-1]) + pos - busy

    def _past_detour(self, cycle: np.ndarray, pos: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
        """(cycle, pos) moved to the end of the detour that pos is inside, if any. A
        detour that ends the period and one that starts it are one detour across the
        boundary: the rank waits for both (so twice, with a wrap to the next cycle)."""
        period = self.period_s
        for _ in range(2):
            i = np.maximum(np.searchsorted(self._starts, pos, side="right") - 1, 0)
            inside = (pos >= self._starts[i]) & (pos < self._ends[i])
            pos = np.where(inside, self._ends[i], pos)
            wrap = pos >= period
            cycle, pos = cycle + wrap, np.where(wrap, pos - period, pos)
        return cycle, pos

    def _args(self) -> list[str]:
        return [] if self.phase == "random" else ["phase=aligned"]

    def __str__(self) -> str:
        return f"{self.kind}({', '.join(self._args())})"


@_register
@dataclass(frozen=True, kw_only=True)
class Periodic(Detours):
    """One detour of ``duration`` at the start of every ``period``."""

    kind: ClassVar[str] = "periodic"
    params: ClassVar[tuple[Param, ...]] = (Param("period", "duration"),
                                           Param("duration", "duration"))
    period: float
    """Seconds between detour starts."""
    duration: float
    """Seconds each detour lasts (< period)."""

    def __post_init__(self) -> None:
        for name in ("period", "duration"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) \
                    or not math.isfinite(v) or v < 0 or v > MAX_DELAY_S:
                raise BadInput(f"detours: {name}: must be a duration in 0 .. 1 hour, "
                               f"got {v!r}")
        if self.period <= 0:
            raise BadInput(f"detours: period: must be > 0, got {format_duration(self.period)}")
        if self.duration >= self.period:
            raise BadInput(f"detours: duration: must be shorter than the period "
                           f"({format_duration(self.period)}), got "
                           f"{format_duration(self.duration)}")
        super().__post_init__()

    @property
    def period_s(self) -> float:
        return float(self.period)

    def _pattern(self) -> tuple[np.ndarray, np.ndarray]:
        if self.duration == 0:
            return np.zeros(0), np.zeros(0)
        return np.zeros(1), np.array([float(self.duration)])

    def _args(self) -> list[str]:
        return [f"period={format_duration(self.period)}",
                f"duration={format_duration(self.duration)}", *super()._args()]


@_register
@dataclass(frozen=True, kw_only=True)
class Trace(Detours):
    """A replayed noise trace: ``start_ns<TAB>duration_ns`` lines, repeated."""

    kind: ClassVar[str] = "trace"
    params: ClassVar[tuple[Param, ...]] = (Param("file", "path"), Param("period", "duration"))
    file: str
    """Path of the trace, relative to the working directory."""
    period: float | None = None
    """Seconds after which the trace repeats; None: the last detour's end."""
    _raw: Any = _hidden()

    def __post_init__(self) -> None:
        if not isinstance(self.file, str) or not self.file:
            raise BadInput(f"detours: file: expected a file name, got {self.file!r}")
        try:
            check_printable("detours: file", self.file)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        if "'" in self.file and '"' in self.file:
            raise BadInput(f"detours: file: a name with both quote characters cannot be "
                           f"written in a schedule, got {self.file!r}")
        if self.period is not None and (isinstance(self.period, bool) or not isinstance(
                self.period, (int, float)) or not 0 < self.period <= MAX_DELAY_S):
            raise BadInput(f"detours: period: must be a duration in (0, 1 hour], "
                           f"got {self.period!r}")
        object.__setattr__(self, "_raw", read_trace(self.file))
        if self.period is None and not np.any(self._raw[1] > 0):
            raise BadInput(f"detours: trace file {self.file!r}: every detour has zero "
                           "length, so the trace has no period of its own: give "
                           "trace(path, period=...)")
        super().__post_init__()

    @property
    def period_s(self) -> float:
        if self.period is not None:
            return float(self.period)
        starts, durations = self._raw
        return float(np.max(starts + durations)) / 1e9  # the lines need not be in order

    def _pattern(self) -> tuple[np.ndarray, np.ndarray]:
        starts, durations = merge(*self._raw)  # in integer ns: touching detours are exact
        return starts / 1e9, durations / 1e9

    def _args(self) -> list[str]:
        out = [_quoted(self.file)]
        if self.period is not None:
            out.append(f"period={format_duration(self.period)}")
        return out + super()._args()


def _quoted(path: str) -> str:
    """``path`` as the call syntax reads it back: bare, or quoted (no escapes exist, so
    the quote is the one character it does not hold) where it holds a character that
    the call syntax or a schedule's one-line form would split at."""
    if not any(c.isspace() or c in "(),=*;#\"'" for c in path):
        return path
    q = "'" if "'" not in path else '"'
    return f"{q}{path}{q}"


def parse_detours(spec: str | Detours) -> Detours:
    """``periodic(period=10ms, duration=250us, phase=random)`` or ``trace(path[,
    period=...][, phase=...])``."""
    if isinstance(spec, Detours):
        return spec
    if not isinstance(spec, str):
        raise BadInput(f"detours: expected text such as 'periodic(period=10ms, "
                       f"duration=250us)', got {spec!r}")
    try:
        call = parse_call(spec)
    except ValueError as exc:
        raise BadInput(f"detours: {exc}") from None
    cls = DETOURS.get(call.name)
    if cls is None:
        raise BadInput(f"detours: unknown kind {call.name!r} (known: {', '.join(DETOURS)})")
    return cls(**_kwargs(cls, call))


def _kwargs(cls: type[Detours], call: Call) -> dict[str, Any]:
    names = [p.name for p in cls.params] + ["phase"]
    out: dict[str, Any] = {}
    for i, arg in enumerate(call.args):
        if arg.key is None and i >= len(cls.params):
            raise BadInput(f"detours: {cls.kind}: too many arguments (parameters: "
                           f"{', '.join(names)})")
        key = arg.key if arg.key is not None else names[i]
        if key not in names:
            raise BadInput(f"detours: {cls.kind}: unknown parameter {key!r} "
                           f"(parameters: {', '.join(names)})")
        if key in out:
            raise BadInput(f"detours: {cls.kind}: {key} given twice")
        if not isinstance(arg.value, (Word, Text)):
            raise BadInput(f"detours: {cls.kind}: {key}: expected a value, got a call")
        text = arg.value.text
        kind = next((p.kind for p in cls.params if p.name == key), "word")
        if kind == "duration":
            try:
                out[key] = parse_duration(text)
            except ValueError as exc:
                raise BadInput(f"detours: {cls.kind}: {key}: {exc}") from None
        else:
            out[key] = text
    missing = [p.name for p in cls.params if p.name not in out
               and not (cls is Trace and p.name == "period")]
    if missing:
        raise BadInput(f"detours: {cls.kind}: missing {missing[0]}")
    return out
