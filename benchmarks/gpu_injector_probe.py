"""Why the CUDA injector is built the way it is: on a GPU, compare ways to put a delay on
the stream, timed with CUDA events from an idle stream (the harness's situation).

    python benchmarks/gpu_injector_probe.py

- triton+fill: the delay written into a device tensor (fill_), then a Triton kernel
  spinning on %globaltimer (what CudaInjector did first).
- triton+arg: the same kernel taking the delay as an argument (one launch): the one
  ``collectives.cuda_inject`` ships.
- torch._sleep: torch.cuda._sleep(cycles), calibrated after warm-up with events.
Also: the tick of %globaltimer as a kernel sees it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from collectives.cuda_inject import _kernel  # noqa: E402


@triton.jit
def spin_ptr(delay_ptr):
    d = tl.load(delay_ptr)
    t0 = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,l", [d],
                                   dtype=tl.int64, is_pure=False, pack=1)
    t = t0
    while t - t0 < d:
        t = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,l", [d],
                                      dtype=tl.int64, is_pure=False, pack=1)


@triton.jit
def ticks(out_ptr, n: tl.constexpr):
    for i in range(n):
        t = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,l", [i],
                                      dtype=tl.int64, is_pure=False, pack=1)
        tl.store(out_ptr + i, t)


spin_arg = _kernel()


def timed(fn, reps=200):
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    out = []
    for _ in range(reps):
        torch.cuda.synchronize()
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        out.append(s.elapsed_time(e) * 1e3)
    return np.array(out)


def main() -> int:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    t = time.perf_counter()
    while time.perf_counter() - t < 1.0:
        (a @ a).sum().item()
    buf = torch.zeros(4096, dtype=torch.int64, device="cuda")
    ticks[(1,)](buf, 4096)
    torch.cuda.synchronize()
    d = np.diff(buf.cpu().numpy())
    nz = d[d > 0]
    print(f"%globaltimer: {d.size} reads, {nz.size} changes, tick p50 {np.median(nz):.0f} ns, "
          f"min {nz.min()} ns, read spacing {d.mean():.1f} ns")
    delay = torch.zeros(1, dtype=torch.int64, device="cuda")
    # calibrate torch.cuda._sleep: cycles per microsecond from a long sleep
    cyc = 20_000_000
    el = timed(lambda: torch.cuda._sleep(cyc), 5)
    per_us = cyc / np.median(el)
    print(f"torch.cuda._sleep: {per_us:.1f} cycles/us after warm-up")
    variants = {
        "triton+fill": lambda us: (delay.fill_(us * 1000), spin_ptr[(1,)](delay)),
        "triton+arg": lambda us: spin_arg[(1,)](us * 1000),
        "torch._sleep": lambda us: torch.cuda._sleep(int(us * per_us)),
        "empty (launch floor)": lambda us: None,
    }
    for name, f in variants.items():
        f(10)
        for us in (10, 100, 1000):
            got = timed(lambda f=f, us=us: f(us)) - (0 if name.startswith("empty") else us)
            print(f"{name:>22} {us:>6} us: err p50 {np.median(got):8.2f}  p99 "
                  f"{np.percentile(got, 99):8.2f}  (us)")
    el = timed(lambda: torch.cuda._sleep(cyc), 5)
    print(f"torch.cuda._sleep re-check: {cyc / np.median(el):.1f} cycles/us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
