"""Delay injectors: make this rank reach the collective ``delay_ns`` after ``t_start_ns``.

The deadline is absolute (start + delay on CLOCK_MONOTONIC), so the injector's own
overhead is absorbed rather than added. Fidelity is measured from the caller's side:
``t_arrive - t_start`` as the workload records it, not the injector's own clock.

Host delays are right for CPU backends only: on a GPU the host runs ahead of the stream,
so a host-side wait is hidden behind queued kernels. GPU runs take ``cuda``
(``cuda_inject.py``): a delay enqueued on the stream before the collective.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import ClassVar

INJECTORS: dict[str, type[Injector]] = {}


def _register(cls: type[Injector]) -> type[Injector]:
    INJECTORS[cls.name] = cls
    return cls


class Injector(ABC):
    """Waits so that this rank arrives at the collective at ``t_start_ns + delay_ns``."""

    name: ClassVar[str]

    @abstractmethod
    def inject(self, t_start_ns: int, delay_ns: int) -> None: ...


@_register
class NoInjector(Injector):
    """No delay at all (the baseline)."""

    name: ClassVar[str] = "none"

    def inject(self, t_start_ns: int, delay_ns: int) -> None:
        return None


SLEEP_ONLY = "sleep only: more ranks than cores"
"""In the injector's recorded name (``host (sleep only: ...)``) when a rank's host injector
sleeps its whole delay, as past the cores (``launch.worker``); readers test for it."""


@_register
class HostInjector(Injector):
    """Sleep for the bulk, then spin on the monotonic clock for the rest.

    The OS overshoots a sleep by tens of microseconds (about 70 µs measured on the
    development machine), so the sleep stops ``sleep_margin_ns`` early and a spin, precise
    to well under a microsecond on an idle core, finishes the wait.
    """

    name: ClassVar[str] = "host"

    def __init__(self, sleep_margin_ns: int = 500_000):
        if sleep_margin_ns < 0:
            raise ValueError(f"sleep_margin_ns: must be >= 0, got {sleep_margin_ns}")
        self.sleep_margin_ns = sleep_margin_ns

    def inject(self, t_start_ns: int, delay_ns: int) -> None:
        if delay_ns <= 0:
            return
        deadline = t_start_ns + delay_ns
        clock = time.perf_counter_ns
        remaining = deadline - clock()
        if remaining > self.sleep_margin_ns:
            time.sleep((remaining - self.sleep_margin_ns) * 1e-9)
        while clock() < deadline:
            pass


def make_injector(name: str, device: str = "cpu") -> Injector:
    if name == "cuda":
        from .cuda_inject import CudaInjector  # GPU machines only

        return CudaInjector("cuda" if device == "cpu" else device)
    if name not in INJECTORS:
        known = ", ".join(sorted([*INJECTORS, "cuda"]))
        raise ValueError(f"injector: unknown {name!r} (known: {known})")
    return INJECTORS[name]()
