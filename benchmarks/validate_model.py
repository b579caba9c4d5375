"""Validate the simulator against real ranks on this machine: a bsp sweep (zero compute,
millisecond delays, a small all-reduce per site) at N = 1, 2, 4, ... up to --max-n (the
core count by default), run for real with ``jitterlab run``; its model is fitted on the
no-jitter points only, so every jittered point is a prediction out of sample. Prints the
measured and predicted mean and p99 step and their errors, from model_validation.csv.

    python benchmarks/validate_model.py                 # N = 1 .. cores
    python benchmarks/validate_model.py --max-n 16      # past the cores: sleeping delays

Past the cores the ranks share them: delays are slept (not spun) so that waiting ranks
give the cores away, and what the all-reduce costs is then mostly the scheduler's.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SCHEDULES = [
    ("none", "constant(0s)"),
    ("exp-1ms", "exponential(1ms)"),
    ("lognormal-1ms", "lognormal(median=1ms, sigma=0.5)"),
    ("uniform-2ms", "uniform(low=0s, high=2ms)"),
]


def spec_text(sizes: list[int], steps: int, backend: str, launcher: str) -> str:
    lines = ['name = "validate-model"', 'workload = "bsp"', "sites_per_step = 4",
             'compute_per_site = "0s"', "message_bytes = 8", f"world_sizes = {sizes}",
             f'backend = "{backend}"', f'launcher = "{launcher}"', f"steps = {steps}",
             "warmup = 10", "seed = 1", "timeout_s = 300", ""]
    for name, dist in SCHEDULES:
        lines += ["[[jitter]]", f'name = "{name}"', f'dist = "{dist}"', ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-n", type=int, default=os.cpu_count() or 2)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--backend", default="gloo")
    p.add_argument("--launcher", default="torchrun")
    p.add_argument("--out", help="result folder (default: a temporary one)")
    args = p.parse_args()
    sizes = sorted({1, *[2**k for k in range(1, 20) if 2**k <= args.max_n], args.max_n})
    out = Path(args.out or tempfile.mkdtemp(prefix="validate-model-"))
    out.mkdir(parents=True, exist_ok=True)
    spec = out / "spec.toml"
    spec.write_text(spec_text(sizes, args.steps, args.backend, args.launcher))
    cmd = [sys.executable, "-m", "experiments.cli", "run", str(spec), "--out",
           str(out / "run"), "--max-ranks-per-host", str(max(sizes))]
    print("running:", " ".join(cmd), file=sys.stderr, flush=True)
    rc = subprocess.call(cmd)
    if rc != 0:
        return rc
    with open(out / "run" / "model_validation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    head = (f"{'schedule':>14} {'N':>4} {'in_sample':>9} {'mean_us':>10} {'model_us':>10} "
            f"{'err':>7} {'p99_us':>10} {'model_us':>10} {'err':>7}")
    print(head)
    worst = 0.0
    for r in rows:
        em = float(r["model_mean_us"]) / float(r["measured_mean_us"]) - 1
        ep = float(r["model_p99_us"]) / float(r["measured_p99_us"]) - 1
        if r["in_sample"] == "False":
            worst = max(worst, abs(em))
        print(f"{r['schedule']:>14} {r['world_size']:>4} {r['in_sample']:>9} "
              f"{float(r['measured_mean_us']):>10.1f} {float(r['model_mean_us']):>10.1f} "
              f"{em:>+7.1%} {float(r['measured_p99_us']):>10.1f} "
              f"{float(r['model_p99_us']):>10.1f} {ep:>+7.1%}")
    print(f"worst out-of-sample error of the mean: {worst:.1%}; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
