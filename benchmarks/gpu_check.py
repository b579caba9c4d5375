"""One prepared GPU check (run it on a machine with one CUDA GPU):

    python benchmarks/gpu_check.py [--quick]

1. Warms the GPU (matrix products for ~1 s: the SM clock rises from idle).
2. The CUDA injector's fidelity at 10, 100 and 1000 µs, timed with CUDA events around
   the delay kernel: median and p99 absolute error, mean error.
3. A world-size-1 NCCL all-reduce through the harness (``jitterlab bench`` path,
   launcher local), with a constant injected delay too.
4. The event-timing path against host timing: for a 1 ms delay kernel and a 64 MiB
   all-reduce, the event-measured time against the host's (synchronize, clock, launch,
   synchronize, clock), and the launch latency that anchors event times to the host clock.

Prints tables; exits 1 if a section fails to run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def warm(torch) -> None:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    t = time.perf_counter()
    while time.perf_counter() - t < 1.0:
        (a @ a).sum().item()


def injector_fidelity(torch, reps: int) -> None:
    from collectives.inject import make_injector
    from jitter_models.percentiles import nearest_rank

    inj = make_injector("cuda")
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    floor = []
    for _ in range(reps):
        s.record()
        e.record()
        torch.cuda.synchronize()
        floor.append(s.elapsed_time(e) * 1e3)
    print(f"floor: two events with nothing between, p50 {np.median(floor):.2f} µs "
          "(included in every error below)")
    print(f"{'requested_us':>13}{'median_abs_err_us':>19}{'p99_abs_err_us':>16}"
          f"{'mean_err_us':>13}")
    for us in (10, 100, 1000):
        errs = []
        for _ in range(reps):
            s.record()
            inj.inject(0, us * 1000)
            e.record()
            torch.cuda.synchronize()
            errs.append(s.elapsed_time(e) * 1e3 - us)
        a = np.abs(errs)
        print(f"{us:>13}{np.median(a):>19.3f}{nearest_rank(a, 99):>16.3f}"
              f"{np.mean(errs):>13.3f}")


def nccl_through_harness(quick: bool) -> None:
    from experiments.bench import render_result, run_bench
    from launch.plan import Plan

    for jitter in (None, "constant(100us)"):
        out = tempfile.mkdtemp(prefix="gpu-check-")
        plan = Plan.build(workload="microbench", out_dir=out, backend="nccl",
                    colls=("all_reduce",), sizes=(1024, 65536, 1 << 20, 64 << 20),
                    iters=20 if quick else 100, warmup=5, check=True, jitter=jitter,
                    timeout_s=120)
        print(render_result(run_bench(plan, launcher="local", nproc=1)))


def events_vs_host(torch, reps: int) -> None:
    import torch.distributed as dist

    from collectives.inject import make_injector
    from launch.bootstrap import free_port

    if not dist.is_initialized():
        dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}",
                                rank=0, world_size=1)
    inj = make_injector("cuda")
    buf = torch.zeros(16 << 20, device="cuda")  # 64 MiB of float32
    cases = {"delay kernel 1000us": lambda: inj.inject(0, 1_000_000),
             "all_reduce 64MiB": lambda: dist.all_reduce(buf)}
    print(f"{'what':>22}{'event_p50_us':>14}{'host_p50_us':>13}{'host-event_us':>15}"
          f"{'anchor_latency_p50_us':>23}")
    for name, fn in cases.items():
        fn()
        torch.cuda.synchronize()
        ev, host, lat = [], [], []
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        marker = torch.cuda.Event(enable_timing=True)
        for _ in range(reps):
            torch.cuda.synchronize()
            h0 = time.perf_counter_ns()
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize()
            h1 = time.perf_counter_ns()
            ev.append(s.elapsed_time(e) * 1e3)
            host.append((h1 - h0) / 1e3)
            # Anchor latency: host clock to when the stream executes an event. Bound it by
            # timing an empty interval: record marker, then sync; host span minus nothing.
            torch.cuda.synchronize()
            a0 = time.perf_counter_ns()
            marker.record()
            marker.synchronize()
            lat.append((time.perf_counter_ns() - a0) / 1e3)
        p_ev, p_h = statistics.median(ev), statistics.median(host)
        print(f"{name:>22}{p_ev:>14.2f}{p_h:>13.2f}{p_h - p_ev:>15.2f}"
              f"{statistics.median(lat):>23.2f}")
    dist.destroy_process_group()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, NCCL "
          f"{'.'.join(map(str, torch.cuda.nccl.version()))}, pid {os.getpid()}")
    failed = 0
    steps = [("warm-up", lambda: warm(torch)),
             ("CUDA injector fidelity (CUDA events around the delay kernel)",
              lambda: injector_fidelity(torch, 50 if args.quick else 300)),
             ("NCCL all-reduce, world size 1, through the harness",
              lambda: nccl_through_harness(args.quick)),
             ("event timing against host timing",
              lambda: events_vs_host(torch, 20 if args.quick else 100))]
    for title, fn in steps:
        section(title)
        try:
            fn()
        except Exception as exc:  # report and go on: one prepared run must say everything
            failed += 1
            print(f"FAILED: {type(exc).__name__}: {exc}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
