"""Validate the simulator against real ranks for dp_step: 2**20 float32 parameters (4 MiB
of gradients) in 4 buckets of 1 MiB, ``tokens_per_rank`` sized so that the h100 roofline
at 0.4 of peak gives 6.36 ms of compute a step (site 0: the 2.12 ms forward pass and
1.06 ms of backward; sites 1-3: 1.06 ms each; host spins on real ranks), an exponential
delay (mean 300 us, rank-scoped) after each site's compute, MPI (mpirun), N = 1 and 2,
overlap off and on. Every bucket's all-reduce is checked exactly on every step.

    .venv/bin/python benchmarks/validate_dp.py [--out DIR] [--steps 400]

The prediction (``jitter_models.simulate``, rank by rank with the ranks' own delay
streams: the warm-up steps are simulated too, then dropped, so step k of the simulation
has the delays real step k had): the workload's own simulated sites, and a network of one
tier whose alpha is the all-reduce's time per call, bandwidth unlimited (one message size
cannot separate the two), fitted at N = 2 only: per (step, site) the minimum over ranks
of t_done - t_arrive, the median over the point. Two kinds of call, two fits: the
blocking all-reduce from every site of the N = 2 point without overlap; the non-blocking
one (Open MPI's libnbc, about twice as slow for 1 MiB on shared memory here) from the last
bucket of the N = 2 point with overlap (it overlaps nothing: the step waits for it).

What is out of sample: N = 1 entirely (no network: the roofline compute and the delays;
the local call, ~20 us a site, is not modelled: an all-reduce's cost at N = 2 is the data
moving, which N = 1 has not); at N = 2, given the call's cost, the rest of the step: the
max over ranks of the delays and, with overlap, how the first three all-reduces hide behind
the backward compute. Targets (the issue): mean within 10%, p99 within 20%; the exit status
is 1 when a point misses one or any ``wrong`` is not 0.

On this 2-core machine a rank that another process preempts stalls the step (its spin
overshoots, its peer waits in the all-reduce): the script waits for the 1-minute load to
fall below 0.5 before each run and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import rank_validation as rv

from experiments.simulation import sites_of
from jitter_models.network import Network, Tier
from jitter_models.simulate import simulate

UNLIMITED_BPS = 1e18

SPEC = """
name = "{name}"
workload = "dp_step"
parameters = 1048576
tokens_per_rank = 400000
bucket_size = "1MB"
overlap = {overlap}
world_sizes = [1, 2]
backend = "mpi"
launcher = "mpirun"
steps = {steps}
warmup = {warmup}
seed = 3
timeout_s = 300

[[jitter]]
name = "exp300us"
dist = "exponential(mean=300us)"
"""


def network(alpha_s: float) -> Network:
    tier = Tier(alpha_s=alpha_s, bandwidth_Bps=UNLIMITED_BPS)
    return Network(inter=tier, intra=tier, ranks_per_node=8)


def predict(spec, n: int, alpha_s: float, warmup: int, steps: int) -> np.ndarray:
    (schedule,) = spec.schedules
    out = simulate(schedule, n, sites_of(spec, 1, n), network=network(alpha_s),
                   steps=warmup + steps, seed=spec.seed, rank_by_rank=True)
    return out.latency_s[warmup:]


def compute_us(ranks: list) -> float:
    """Median over (rank, step, site) of the measured compute (site start to the delay):
    beside the roofline's 1.06 ms (three sites of four) it shows a busy host."""
    per = [(c["t_arrive_ns"] - c["t_start_ns"] - c["delay_ns"])[c["site"] != rv.STEP_SITE]
           for c, _ in ranks]
    return float(np.median(np.concatenate(per))) / 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="folder for the runs and validate_dp.json")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=10)
    args = ap.parse_args(argv)
    folder = args.out or Path(tempfile.mkdtemp(prefix="validate-dp-"))
    folder.mkdir(parents=True, exist_ok=True)

    runs, loads = {}, {}
    for overlap in (False, True):
        name = f"dp-overlap-{'on' if overlap else 'off'}"
        loads[name] = rv.wait_for_idle()
        runs[overlap] = rv.run_spec(folder, name, SPEC.format(
            name=name, overlap=str(overlap).lower(), steps=args.steps, warmup=args.warmup))
    # blocking: every site of N = 2; non-blocking: the last bucket of N = 2 with overlap
    fitted = {False: float(np.median(rv.call_minima_s(runs[False][1][2][1], args.steps))),
              True: float(np.median(rv.call_minima_s(runs[True][1][2][1], args.steps)[:, -1]))}
    rows, ok = [], True
    for overlap, (spec, points) in runs.items():
        for n, (point, ranks) in sorted(points.items()):
            measured = rv.measured_steps_s(ranks)
            predicted = predict(spec, n, fitted[overlap], args.warmup, args.steps)
            wrong = json.loads((point / "summary.json").read_text()).get("wrong")
            row = {"n": n, "overlap": overlap, "label": f"{n} overlap={'on' if overlap else 'off'}",
                   "fitted": (("blocking" if not overlap else "non-blocking") + " all-reduce "
                              "alpha" if n == 2 else "nothing"),
                   "wrong": wrong, "site_compute_median_us": compute_us(ranks),
                   **rv.compare(measured, predicted)}
            ok &= row["meets"] and wrong == 0
            rows.append(row)
    print(f"dp_step 2**20 parameters, 4 buckets of 1 MiB, {args.steps} steps; load before "
          + ", ".join(f"{k} {v:.2f}" for k, v in loads.items()) + f", after "
          f"{os.getloadavg()[0]:.2f}")
    print(f"all-reduce alpha fitted at N = 2: blocking {fitted[False] * 1e6:.1f} us, "
          f"non-blocking {fitted[True] * 1e6:.1f} us")
    rv.print_rows(rows, label="N")
    for r in rows:
        print(f"{r['label']}: measured site compute median {r['site_compute_median_us']:.0f} us "
              "(roofline 1060 us at three sites of four)")
    saved = {k: rows[1][k] - rows[3][k] for k in ("measured_mean_ms", "predicted_mean_ms")}
    print(f"overlap saves at N = 2: measured {saved['measured_mean_ms']:.3f} ms, simulated "
          f"{saved['predicted_mean_ms']:.3f} ms")
    result = {"load_1min": loads, "alpha_s": {"blocking": fitted[False],
                                              "non_blocking": fitted[True]},
              "targets": {"mean": rv.MEAN_TOL, "p99": rv.P99_TOL}, "rows": rows,
              "overlap_saves_ms": saved, "pass": bool(ok)}
    (folder / "validate_dp.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'pass' if ok else 'MISS'}; wrote {folder / 'validate_dp.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
