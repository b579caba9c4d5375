"""A delay on the GPU stream: a one-thread kernel that spins on the global nanosecond
timer (``%globaltimer``) for the requested time.

Why this design (measured on an H200 with ``benchmarks/gpu_injector_probe.py`` and
``benchmarks/gpu_check.py``): ``torch.cuda._sleep(cycles)`` launches faster, but counts SM
cycles, and the SM clock moves with load and power (calibrated at 1695 cycles/µs right
after heavy matrix products, 1971 a few seconds later: a 1 ms request slept 0.88 ms).
``%globaltimer`` ticks every 32 ns whatever the clock. The kernel (Triton, which ships
with CUDA builds of torch) takes the delay as an argument: one launch, which costs about
6 µs more than ``_sleep``'s when the stream is idle, and nothing when the host runs ahead
of the stream, as it does in real decode steps. Under CUDA graph capture the argument is
frozen into the graph: re-capture after changing delays.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .inject import Injector

_KERNEL: Any = None


def _kernel() -> Any:
    """Compile-on-first-use: Triton is imported only on GPU machines."""
    global _KERNEL
    if _KERNEL is None:
        import triton
        import triton.language as tl

        # No specialization on the delay's value (Triton would otherwise compile a new
        # kernel the first time a delay is, say, a multiple of 16: 40 ms, seen here).
        @triton.jit(do_not_specialize=["d"])
        def spin(d):
            # The asm takes d only because Triton wants an operand; it reads the timer.
            t0 = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,l", [d],
                                           dtype=tl.int64, is_pure=False, pack=1)
            t = t0
            while t - t0 < d:
                t = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,l", [d],
                                              dtype=tl.int64, is_pure=False, pack=1)

        _KERNEL = spin
    return _KERNEL


class CudaInjector(Injector):
    """Enqueue the delay on the current stream, before the collective (the host returns
    at once: the stream, not the host, waits)."""

    name: ClassVar[str] = "cuda"

    def __init__(self, device: str = "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError("injector: 'cuda' needs a CUDA device, and this process sees "
                             "none (use 'host' with CPU backends)")
        self.device = device
        self._spin = _kernel()
        with torch.cuda.device(device):
            self._spin[(1,)](1001)  # compile now, not inside the first timed iteration
            torch.cuda.synchronize()

    def inject(self, t_start_ns: int, delay_ns: int) -> None:
        if delay_ns > 0:
            self._spin[(1,)](delay_ns)
