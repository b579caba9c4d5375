"""A delay on the GPU stream: ``torch.cuda._sleep(cycles)``, calibrated after warm-up.

``_sleep`` launches a one-thread kernel that spins for a number of SM clock cycles, from a
native (fast) launch. The SM clock moves (an H200 idled at 345 MHz and ran at 1980 MHz),
so the injector warms the GPU, measures cycles per microsecond with CUDA events on a long
sleep, and can re-check at the end of a run (``recheck``). Measured on an H200
(``benchmarks/gpu_injector_probe.py``): this adds nothing measurable beyond the ~6.6 µs
between two events on an idle stream, while a Triton kernel spinning on ``%globaltimer``
(which would not depend on the clock and could read its delay from device memory inside
a CUDA graph) paid 6 to 17 µs more in its Python launch. Under graph capture the cycle
count is frozen into the graph: re-capture after changing delays.
"""

from __future__ import annotations

import statistics
import time
from typing import ClassVar

from .inject import Injector

_CALIBRATION_CYCLES = 20_000_000  # about 10 ms at 2 GHz: long next to the event floor


class CudaInjector(Injector):
    """Enqueue the delay on the current stream, before the collective (the host returns
    at once: the stream, not the host, waits)."""

    name: ClassVar[str] = "cuda"

    def __init__(self, device: str = "cuda", warm_s: float = 0.5):
        import torch

        if not torch.cuda.is_available():
            raise ValueError("injector: 'cuda' needs a CUDA device, and this process sees "
                             "none (use 'host' with CPU backends)")
        self._torch = torch
        self.device = device
        _warm(torch, device, warm_s)
        self.cycles_per_us = self.measure_cycles_per_us()

    def measure_cycles_per_us(self, reps: int = 3) -> float:
        torch = self._torch
        with torch.cuda.device(self.device):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            spans = []
            for _ in range(reps):
                s.record()
                torch.cuda._sleep(_CALIBRATION_CYCLES)
                e.record()
                e.synchronize()
                spans.append(s.elapsed_time(e) * 1e3)
        return _CALIBRATION_CYCLES / statistics.median(spans)

    def recheck(self) -> float:
        """Cycles per µs now, to compare with the calibration (the clock may have moved)."""
        return self.measure_cycles_per_us()

    def inject(self, t_start_ns: int, delay_ns: int) -> None:
        if delay_ns > 0:
            self._torch.cuda._sleep(cycles_for(delay_ns, self.cycles_per_us))


def cycles_for(delay_ns: int, cycles_per_us: float) -> int:
    """SM cycles to spin for ``delay_ns`` at ``cycles_per_us`` (rounded to nearest)."""
    if cycles_per_us <= 0:
        raise ValueError(f"cycles_per_us: must be > 0, got {cycles_per_us!r}")
    return max(0, round(delay_ns * cycles_per_us / 1000))


def _warm(torch, device: str, seconds: float) -> None:
    """Matrix products until ``seconds`` pass: the SM clock leaves its idle state."""
    if seconds <= 0:
        return
    a = torch.randn(4096, 4096, device=device, dtype=torch.float16)
    t = time.perf_counter()
    while time.perf_counter() - t < seconds:
        (a @ a).sum().item()
