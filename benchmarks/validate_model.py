"""Validate the simulator against real ranks on this machine: a bsp sweep (zero compute,
millisecond delays, a small all-reduce per site) at N = 1, 2, 4, ... up to --max-n (the
core count by default), run for real with ``jitterlab run``; its model is fitted on the
no-jitter points only (``none``, first, and ``none-again``, last, pooled: a reference that
brackets the others in time), so every jittered point is a prediction out of sample.
Prints the measured and predicted mean and p99 step and their errors, from
model_validation.csv, and the host's drift between the two brackets at each N: the
floor under any model's error on this machine.

    python benchmarks/validate_model.py                 # N = 1 .. cores
    python benchmarks/validate_model.py --max-n 16      # past the cores: sleeping delays
    python benchmarks/validate_model.py --quickstart    # the quickstart sweep, N = 1, 2

--quickstart runs the quickstart preset (tp_decode, emulated compute, MPI) with its five
schedules plus the same ``none-again`` bracket, over the preset's MPI and launcher (so
``--backend``, ``--launcher`` and ``--max-n`` do not apply). Each out-of-sample row is
checked against 10% on the mean and 20% on the p99; the exit status is 1 when any misses.

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

STALL_S = 0.05  # a host stall: a step this much longer than the median (s)
SCHEDULES = [
    ("none", "constant(0s)"),
    ("exp-1ms", "exponential(1ms)"),
    ("lognormal-1ms", "lognormal(median=1ms, sigma=0.5)"),
    ("uniform-2ms", "uniform(low=0s, high=2ms)"),
    ("none-again", "constant(0s)"),  # the reference again, last: it brackets the drift
]


def spec_text(sizes: list[int], steps: int, backend: str, launcher: str) -> str:
    lines = ['name = "validate-model"', 'workload = "bsp"', "sites_per_step = 4",
             'compute_per_site = "0s"', "message_bytes = 8", f"world_sizes = {sizes}",
             f'backend = "{backend}"', f'launcher = "{launcher}"', f"steps = {steps}",
             "warmup = 10", "seed = 1", "timeout_s = 300", ""]
    for name, dist in SCHEDULES:
        lines += ["[[jitter]]", f'name = "{name}"', f'dist = "{dist}"', ""]
    return "\n".join(lines)


def quickstart_text(steps: int) -> str:
    from importlib import resources

    text = resources.files("experiments.presets").joinpath("quickstart.toml").read_text(
        encoding="utf-8")
    text = text.replace('name = "quickstart"', 'name = "validate-quickstart"')
    text = "\n".join(f"steps = {steps}" if line.startswith("steps = ") else line
                     for line in text.splitlines())
    return text + '\n[[jitter]]\nname = "none-again"\ndist = "constant(0s)"\n'


def host_stalls(run: Path) -> dict[tuple[str, int], str]:
    """Per point, "k/n": its steps more than STALL_S above its median step. Where k/n
    crosses 1%, the p99 jumps from the jitter's to the host's (a stall of ~100 ms here)."""
    import numpy as np

    from collectives.timing import read_rank_file
    from experiments.analysis import step_latencies

    out = {}
    with open(run / "points.csv", newline="") as f:
        for p in csv.DictReader(f):
            files = sorted((run / "points" / p["point"]).glob("rank-*.parquet"))
            lat = step_latencies([read_rank_file(x)[0] for x in files])
            k = int(np.sum(lat > np.median(lat) + STALL_S))
            out[(p["schedule"], int(p["world_size"]))] = f"{k}/{lat.size}"
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-n", type=int, default=os.cpu_count() or 2)
    p.add_argument("--steps", type=int, default=None,
                   help="recorded steps per point (default 150; --quickstart: 1500)")
    p.add_argument("--backend", default="gloo")
    p.add_argument("--launcher", default="torchrun")
    p.add_argument("--out", help="result folder (default: a temporary one)")
    p.add_argument("--quickstart", action="store_true",
                   help="the quickstart sweep (N = 1, 2) and a no-jitter control")
    args = p.parse_args()
    sizes = sorted({1, *[2**k for k in range(1, 20) if 2**k <= args.max_n], args.max_n})
    out = Path(args.out or tempfile.mkdtemp(prefix="validate-model-"))
    out.mkdir(parents=True, exist_ok=True)
    spec = out / "spec.toml"
    if args.steps is None:
        args.steps = 1500 if args.quickstart else 150
    spec.write_text(quickstart_text(args.steps) if args.quickstart else
                    spec_text(sizes, args.steps, args.backend, args.launcher))
    cmd = [sys.executable, "-m", "experiments.cli", "run", str(spec), "--out",
           str(out / "run"), "--max-ranks-per-host", str(2 if args.quickstart else max(sizes))]
    print("running:", " ".join(cmd), file=sys.stderr, flush=True)
    rc = subprocess.call(cmd)
    if rc != 0:
        return rc
    with open(out / "run" / "model_validation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    stalls = host_stalls(out / "run")
    head = (f"{'schedule':>14} {'N':>4} {'in_sample':>9} {'mean_us':>10} {'model_us':>10} "
            f"{'err':>7} {'p99_us':>10} {'model_us':>10} {'err':>7} {'stalls':>8}")
    print(head)
    worst = worst_p99 = 0.0
    misses = 0
    for r in rows:
        em = float(r["model_mean_us"]) / float(r["measured_mean_us"]) - 1
        ep = float(r["model_p99_us"]) / float(r["measured_p99_us"]) - 1
        if r["in_sample"] == "False":
            worst, worst_p99 = max(worst, abs(em)), max(worst_p99, abs(ep))
            misses += abs(em) > 0.10 or abs(ep) > 0.20
        print(f"{r['schedule']:>14} {r['world_size']:>4} {r['in_sample']:>9} "
              f"{float(r['measured_mean_us']):>10.1f} {float(r['model_mean_us']):>10.1f} "
              f"{em:>+7.1%} {float(r['measured_p99_us']):>10.1f} "
              f"{float(r['model_p99_us']):>10.1f} {ep:>+7.1%} "
              f"{stalls.get((r['schedule'], int(r['world_size'])), ''):>8}")
    by = {(r["schedule"], int(r["world_size"])): r for r in rows}
    for (name, n), r in sorted(by.items()):
        if name == "none-again" and ("none", n) in by:
            first = float(by[("none", n)]["measured_mean_us"])
            again = float(r["measured_mean_us"])
            p_first = float(by[("none", n)]["measured_p99_us"])
            p_again = float(r["measured_p99_us"])
            print(f"host drift at N = {n}: the no-jitter mean {first:.0f} -> {again:.0f} µs "
                  f"({again / first - 1:+.1%}), p99 {p_first:.0f} -> {p_again:.0f} µs "
                  f"({p_again / p_first - 1:+.1%})")
    print(f"worst out-of-sample error of the mean: {worst:.1%}, of the p99: {worst_p99:.1%}; "
          f"outside 10% / 20%: {misses}; results in {out}")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
