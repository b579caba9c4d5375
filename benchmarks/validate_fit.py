"""measure -> fit -> predict on real ranks: ``jitterlab bench`` at N = 2 (mpirun, MPI, a
1 KiB all-reduce, 3,000 iterations, a lognormal delay injected on each rank before each
iteration), ``jitterlab fit`` of the achieved delays (``--what delay``: both ranks'
``delay_ns``, pooled), and the simulator's prediction of the bench point from that fit.

    .venv/bin/python benchmarks/validate_fit.py [--out DIR] [--iters 3000]

What is predicted is what the fit never saw: the per-iteration time (the max over the two
ranks of t_done - t_start, as bench reports it), whose tail is the max of two ranks'
delays plus the call. The simulator draws each rank's delay from the fitted law (its best
by BIC) and adds the call's own cost, fitted on the same run: per iteration the min over
ranks of t_done - t_arrive (the last rank to arrive waits for no one), its median, as the
network's per-call cost (``Network.call_s``). Targets: mean within 10%, p99 within 20%
(exit 1 on a miss). Waits for an idle host first (1-minute load < 0.5).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rank_validation as rv

from collectives.timing import read_rank_file
from experiments import fit_input
from jitter_models.distributions import parse
from jitter_models.network import Network, Tier
from jitter_models.schedule import Schedule
from jitter_models.simulate import Site, simulate

JITTER = "lognormal(median=200us, sigma=0.6)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--iters", type=int, default=3000)
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="validate_fit_"))
    out.mkdir(parents=True, exist_ok=True)
    load = rv.wait_for_idle()
    run = out / "bench"
    cmd = [rv.JITTERLAB, "bench", "--launcher", "mpirun", "--nproc", "2", "--backend", "mpi",
           "-b", "1K", "-e", "1K", "-n", str(args.iters), "-w", "20", "--jitter", JITTER,
           "--seed", "1", "-c", "--out", str(run), "--json", str(out / "bench.json")]
    res = subprocess.run(cmd, capture_output=True, text=True, env=rv.env(), timeout=900)
    if res.returncode != 0:
        raise SystemExit(f"bench failed:\n{res.stderr[-3000:]}")
    res = subprocess.run([rv.JITTERLAB, "fit", str(run), "--what", "delay", "--out",
                          str(out / "fit")], capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise SystemExit(f"fit failed:\n{res.stderr[-3000:]}")
    fit = json.loads((out / "fit" / "fit.json").read_text())
    per_iter, _ = fit_input.load(str(run), "iteration")  # what bench reports, as fit reads it
    ranks = [read_rank_file(f) for f in sorted(run.glob("rank-*.parquet"))]
    call = float(np.median(rv.call_minima_s(ranks, args.iters)))
    free = Tier(alpha_s=0.0, bandwidth_Bps=1e18)
    net = Network(inter=free, intra=free, ranks_per_node=8, call_s=call)
    best = fit["best"]
    sim = simulate(Schedule(dist=parse(best["dist"])), 2, (Site(0.0, 1024),), network=net,
                   steps=20_000, seed=7)
    row = rv.compare(per_iter, sim.latency_s)
    wrong = json.loads((out / "bench.json").read_text())["rows"][0]["wrong"]
    row.update({"label": "N=2", "wrong": wrong, "fitted": f"call {call * 1e6:.1f} us"})
    print(f"bench: {args.iters} iterations of a 1 KiB all-reduce at N = 2 over MPI, "
          f"injected {JITTER}; 1-minute load {load:.2f}")
    print(f"fit of the achieved delays ({fit['n']} samples): best {best['dist']} "
          f"(AD p-value {best['p_value']})")
    rv.print_rows([row])
    doc = {"jitter": JITTER, "iters": args.iters, "load": load, "best": best["dist"],
           "call_us": call * 1e6, **{k: v for k, v in row.items() if k != "label"}}
    (out / "validate_fit.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"files: {out}")
    return 0 if row["meets"] else 1


if __name__ == "__main__":
    sys.exit(main())
