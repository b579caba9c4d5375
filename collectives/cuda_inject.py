"""A delay on the GPU stream: a one-thread kernel that spins on the global nanosecond timer
until the delay it reads from a device tensor has passed.

Why this design: ``torch.cuda._sleep(cycles)`` counts SM cycles, and the SM clock moves
(an H200 idled at 345 MHz and ran at 1980 MHz), so it needs calibration after warm-up and
re-checking; ``%globaltimer`` counts nanoseconds whatever the clock, and a delay read from
device memory can change between replays of a captured CUDA graph. The kernel is written
in Triton (which ships with CUDA builds of torch); importing this module needs neither.
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

        @triton.jit
        def spin(delay_ptr):
            d = tl.load(delay_ptr)
            t0 = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,l", [d],
                                           dtype=tl.int64, is_pure=False, pack=1)
            t = t0
            while t - t0 < d:
                t = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,l", [d],
                                              dtype=tl.int64, is_pure=False, pack=1)

        _KERNEL = spin
    return _KERNEL


class CudaInjector(Injector):
    """Enqueue the delay on the current stream, before the collective (host returns at
    once: the stream, not the host, waits)."""

    name: ClassVar[str] = "cuda"

    def __init__(self, device: str = "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError("injector: 'cuda' needs a CUDA device, and this process sees "
                             "none (use 'host' with CPU backends)")
        self._torch = torch
        self._delay = torch.zeros(1, dtype=torch.int64, device=device)
        self._spin = _kernel()

    def inject(self, t_start_ns: int, delay_ns: int) -> None:
        if delay_ns <= 0:
            return
        self._delay.fill_(delay_ns)  # stream-ordered: the kernel below reads this value
        self._spin[(1,)](self._delay)
