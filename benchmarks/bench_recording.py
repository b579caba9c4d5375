"""The cost of recording: an emulated Llama-3-8B decode (H100 roofline) with per-site
records on and off, in interleaved blocks, one rank in-process over MPI.

    .venv/bin/python benchmarks/bench_recording.py [--check]

Target: median step time with recording within 2% of without.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collectives import tp_decode  # noqa: E402
from collectives.backends import MPIBackend  # noqa: E402
from collectives.inject import make_injector  # noqa: E402
from collectives.models import model_config  # noqa: E402
from collectives.timing import STEP_SITE  # noqa: E402
from jitter_models import parse_schedule  # noqa: E402


def block(backend, record: bool, steps: int) -> list[float]:
    records, _ = tp_decode.run(
        backend, cfg=model_config("llama-3-8b"), batch=1, steps=steps, warmup=1,
        compute="emulated", hw=tp_decode.hardware("h100"), dtype="float32", seed=0,
        schedule=parse_schedule("exponential(20us)"), injector=make_injector("host"),
        node=0, record_sites=record)
    t = records.table()
    rows = t["site"] == STEP_SITE
    return ((t["t_done_ns"][rows] - t["t_start_ns"][rows]) / 1e6).tolist()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true")
    p.add_argument("--blocks", type=int, default=6)
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args()
    backend = MPIBackend()
    on, off = [], []
    for _ in range(args.blocks):
        on += block(backend, True, args.steps)
        off += block(backend, False, args.steps)
    m_on, m_off = statistics.median(on), statistics.median(off)
    diff = m_on / m_off - 1
    ok = abs(diff) <= 0.02
    print(f"{'steps':>7}{'median_on_ms':>14}{'median_off_ms':>15}{'diff':>9}  target |diff| <= 2%")
    print(f"{len(on):>7}{m_on:>14.3f}{m_off:>15.3f}{diff:>+9.2%}  {'ok' if ok else 'MISS'}")
    print(f"(p99 on {np.percentile(on, 99):.3f} ms, off {np.percentile(off, 99):.3f} ms)")
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
