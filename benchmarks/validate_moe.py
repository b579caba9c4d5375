"""Validate the simulator against real ranks for moe_decode: Mixtral-8x7b (4 layers),
skewed routing, 8 tokens per rank, float32 messages, MPI (mpirun), emulated compute (host
spins of the h100 roofline: ~105 us per expert read, ~25 us the attention site), a
rank-scoped exponential delay (mean 500 us, slept) before every all-to-all. Two sweeps:

- timed, N = 1 and 2, ``check = false``: the all-to-alls are still checked exactly on
  every warm-up step; every step is not, because the check's host work (numpy fills and
  compares of the 65536-element buffers) runs inside the timed sites and between them,
  5-15 ms a step here against a ~9 ms step, which no model of the workload holds;
- checked, N = 1, 2, 4, ``check = true`` (every step), for ``wrong`` only: N = 4 is 4
  ranks on 2 cores (the launcher oversubscribes), its timing means nothing here.

    .venv/bin/python benchmarks/validate_moe.py [--out DIR] [--steps 300]

The prediction (``jitter_models.simulate``, rank by rank): the workload's own simulated
sites at the point's plan params, so each site's ``MoELoad`` draws the routing the ranks
drew, and the spec's schedule with the plan's seed, so each rank's delays are its own.
The ranks draw their delays for warm-up + recorded steps from one stream and the
recorded steps come after the warm-up; the simulator draws its delays from the same
stream starting at its step 0. So the simulation runs warm-up + recorded steps with the
loads' ``offset`` set to 0 (routing step = simulated step) and drops the warm-up: step k
then has recorded step k's routing *and* delays (checked against the records'
``delay_req_ns``).

The network: the native all-to-all's per-call cost, fitted at N = 2 only: per (step,
site) the minimum over ranks of t_done - t_arrive (the last rank to arrive waits for no
one), the median over the point. It goes into the model as the call's host cost
(``Network.call_s``, paid on one rank as well), with alpha 0 and bandwidth unlimited: the
two ranks share one host's memory, so the hypothesis under test is that the call's cost is
the host's, not the link's (the bytes' effect on the call is printed: the fit of
alpha + bytes / bandwidth on the same minima). N = 1 is out of sample entirely: the
roofline compute, the delays and that call cost; it tests the hypothesis.

Targets (the issue): mean within 10%, p99 within 20%; the exit status is 1 when a timed
point misses one or any point's ``wrong`` is not 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import rank_validation as rv

from jitter_models.network import Network, Tier
from jitter_models.simulate import Site, simulate

UNLIMITED_BPS = 1e18

SPEC = """
name = "{name}"
workload = "moe_decode"
model = {{ preset = "mixtral-8x7b", layers = 4 }}
routing = "skewed"
routing_skew = 1.0
routing_seed = 0
compute = "emulated"
hardware = "h100"
check = {check}
batch = [8]
dtype = "float32"
world_sizes = {sizes}
backend = "mpi"
launcher = "mpirun"
steps = {steps}
warmup = {warmup}
seed = 7
timeout_s = 300

[[jitter]]
name = "exp500us"
dist = "exponential(mean=500us)"
scope = "rank"
"""


def run_sweep(folder: Path, name: str, sizes: list[int], steps: int, warmup: int,
              check: bool) -> tuple[object, dict[int, tuple[Path, list]]]:
    """The spec and, per world size, its point folder and each rank's (columns, meta)."""
    return rv.run_spec(folder, name, SPEC.format(name=name, sizes=sizes, steps=steps,
                                              warmup=warmup, check=str(check).lower()))


def bytes_fit(ranks: list, steps: int, minima: np.ndarray) -> tuple[float, float]:
    """(alpha_s, bandwidth_Bps) of minima ~ alpha + max rank bytes / bandwidth (least
    squares), the check on whether the uneven bytes matter."""
    b = np.max([rv.site_rows(c, steps, "bytes") for c, _ in ranks], axis=0).ravel()
    slope, alpha = np.polyfit(b.astype(float), minima.ravel(), 1)
    return float(alpha), float(1 / slope) if slope > 0 else float("inf")


def network(call_s: float) -> Network:
    tier = Tier(alpha_s=0.0, bandwidth_Bps=UNLIMITED_BPS)
    return Network(inter=tier, intra=tier, ranks_per_node=8, call_s=call_s)


def sim_sites(spec, plan: dict, n: int) -> tuple[Site, ...]:
    """The workload's sites at the plan params, loads at routing offset 0 (docstring)."""
    params = plan["params"]
    out = []
    for s in spec.work.simulated_sites(params, batch=params["batch"], dtype=plan["dtype"],
                                       world_size=n):
        load = dataclasses.replace(s.load, offset=0) if s.load is not None else None
        out.append(Site(compute_s=float(s.compute_s), message_bytes=int(s.message_bytes),
                        collective=s.collective, algorithm=spec.algorithm,
                        overlap=bool(s.overlap), load=load))
    return tuple(out)


def predict(spec, plan: dict, n: int, call_s: float) -> np.ndarray:
    (schedule,) = spec.schedules
    warmup, steps = plan["params"]["warmup"], plan["params"]["steps"]
    out = simulate(schedule, n, sim_sites(spec, plan, n), network=network(call_s),
                   steps=warmup + steps, seed=plan["seed"], rank_by_rank=True)
    return out.latency_s[warmup:]


def diagnostics(spec, plan: dict, ranks: list, n: int) -> dict:
    """Where a miss would come from: compute spun vs the roofline, delays achieved vs
    asked, the simulator's delays vs the ranks' (the pairing), the host's gaps."""
    (schedule,) = spec.schedules
    params = plan["params"]
    warmup, steps = params["warmup"], params["steps"]
    sites = spec.work.simulated_sites(params, batch=params["batch"], dtype=plan["dtype"],
                                      world_size=n)
    over, delay_err, pair_err, gap = [], [], [], []
    for r, (cols, _meta) in enumerate(ranks):
        roof = np.array([[s.compute_s + (s.load.draw(n, k).compute_s[r] if s.load else 0.0)
                          for s in sites] for k in range(steps)])
        spun = (rv.site_rows(cols, steps, "t_arrive_ns") - rv.site_rows(cols, steps, "t_start_ns")
                - rv.site_rows(cols, steps, "delay_ns")) * 1e-9
        over.append(spun - roof)
        delay_err.append((rv.site_rows(cols, steps, "delay_ns")
                          - rv.site_rows(cols, steps, "delay_req_ns")) * 1e-9)
        sim = schedule.delays(plan["seed"], r, 0, n, warmup + steps, len(sites))[warmup:]
        pair_err.append(np.max(np.abs(sim - rv.site_rows(cols, steps, "delay_req_ns") * 1e-9)))
        # time in a step outside every site (the combine's check between sites, the
        # step's end): step row minus the sum of the site spans
        t_start, t_done = rv.site_rows(cols, steps, "t_start_ns"), rv.site_rows(cols, steps,
                                                                            "t_done_ns")
        gap.append((t_start[:, 1:] - t_done[:, :-1]).sum(axis=1) * 1e-9)
    over, delay_err, gap = np.stack(over), np.stack(delay_err), np.stack(gap)
    calls = rv.call_minima_s(ranks, steps)
    return {"call_dispatch_median_us": float(np.median(calls[:, 0::2])) * 1e6,
            "call_combine_median_us": float(np.median(calls[:, 1::2])) * 1e6,
            "compute_over_roofline_median_us": float(np.median(over)) * 1e6,
            "compute_over_roofline_p99_us": float(np.quantile(over, 0.99)) * 1e6,
            "compute_over_roofline_by_site_median_us":
                [round(float(x) * 1e6, 1) for x in np.median(over, axis=(0, 1))],
            "delay_over_asked_median_us": float(np.median(delay_err)) * 1e6,
            "delay_over_asked_p99_us": float(np.quantile(delay_err, 0.99)) * 1e6,
            "sim_vs_rank_delays_max_abs_us": float(max(pair_err)) * 1e6,
            "between_sites_per_step_median_us": float(np.median(gap)) * 1e6}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="folder for the runs and validate_moe.json")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--check-steps", type=int, default=20,
                    help="steps of the check = true run (N = 1, 2, 4)")
    args = ap.parse_args(argv)
    folder = args.out or Path(tempfile.mkdtemp(prefix="validate-moe-"))
    folder.mkdir(parents=True, exist_ok=True)

    load_timed = rv.wait_for_idle()
    spec, points = run_sweep(folder, "moe-timed", [1, 2], args.steps, args.warmup, False)
    load_after = os.getloadavg()[0]
    load_check = rv.wait_for_idle()
    _, checked = run_sweep(folder, "moe-check", [1, 2, 4], args.check_steps, args.warmup,
                           True)

    ranks2 = points[2][1]
    minima = rv.call_minima_s(ranks2, args.steps)
    call_s = float(np.median(minima))
    fit_alpha, fit_bw = bytes_fit(ranks2, args.steps, minima)

    rows, ok = [], True
    for n, (point, ranks) in sorted(points.items()):
        plan = ranks[0][1]["plan"]
        measured = rv.measured_steps_s(ranks)
        predicted = predict(spec, plan, n, call_s)
        wrong = json.loads((point / "summary.json").read_text()).get("wrong")
        row = {"n": n, "label": str(n), "timed": True,
               "fitted": "all-to-all call cost" if n == 2 else "nothing", "wrong": wrong,
               **rv.compare(measured, predicted), "diagnostics": diagnostics(spec, plan, ranks, n)}
        ok &= row["meets"] and wrong == 0
        rows.append(row)
    for n, (point, ranks) in sorted(checked.items()):
        wrong = json.loads((point / "summary.json").read_text()).get("wrong")
        measured = rv.measured_steps_s(ranks)
        rows.append({"n": n, "timed": False, "fitted": "-", "wrong": wrong,
                     "check_every_step": True, "measured_mean_ms": measured.mean() * 1e3,
                     "note": ("check = true, every step checked; timing not predicted (the "
                              "check's host work is inside the timed step)" if n < 4 else
                              "check = true; 4 ranks on 2 cores (oversubscribed): timing "
                              "not meaningful")})
        ok &= wrong == 0

    print(f"moe_decode mixtral-8x7b x4 layers, skewed routing, 8 tokens/rank, "
          f"{args.steps} steps; load {load_timed:.2f} before, {load_after:.2f} after the "
          f"timed run, {load_check:.2f} before the checked run")
    print(f"all-to-all call cost fitted at N = 2: {call_s * 1e6:.1f} us (median of per-call "
          f"minima); alpha + bytes/bw on the same minima: {fit_alpha * 1e6:.1f} us + "
          f"{fit_bw / 1e9:.2f} GB/s")
    rv.print_rows([r for r in rows if r["timed"]])
    for r in rows:
        if not r["timed"]:
            print(f"{r['n']:>12} {r['measured_mean_ms']:8.3f} {'-':>8} {'-':>7} {'-':>8} "
                  f"{'-':>8} {'-':>7} {r['wrong']!s:>6}  ({r['note']})")
    for r in rows:
        if r["timed"]:
            print(f"N = {r['n']} diagnostics: " + ", ".join(
                f"{k} {v}" if isinstance(v, list) else f"{k} {v:.1f}"
                for k, v in r["diagnostics"].items()))
    result = {"load_1min": {"before_timed": load_timed, "after_timed": load_after,
                            "before_check": load_check},
              "call_s": call_s, "bytes_fit": {"alpha_s": fit_alpha, "bandwidth_Bps": fit_bw},
              "targets": {"mean": rv.MEAN_TOL, "p99": rv.P99_TOL}, "rows": rows, "pass": bool(ok)}
    (folder / "validate_moe.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'pass' if ok else 'MISS'}; wrote {folder / 'validate_moe.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
