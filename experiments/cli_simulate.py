"""The CLI's ``simulate`` command: a sweep spec through the simulator."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub) -> None:
    s = sub.add_parser(
        "simulate", help="simulate a sweep spec's step latency to a million ranks",
        description="Simulate every (schedule, N) of a sweep spec with its [network] table "
                    "(numpy; no processes): step latency mean and tails with Monte Carlo "
                    "errors, efficiency against N = 1 (always simulated), useful "
                    "parallelism. Writes simulation.json, simulation.csv, report.md and "
                    "report.html.")
    s.add_argument("spec", help="SPEC.toml (the same as for run, plus [network])")
    s.add_argument("--out", metavar="DIR",
                   help="output folder (default runs/<spec name>/simulation)")
    s.add_argument("--json", metavar="FILE", help="also write simulation.json here")
    s.add_argument("--steps", type=int, metavar="K",
                   help="simulated steps per point (default: the spec's steps)")
    s.add_argument("--cutoff", type=int, metavar="N", default=None,
                   help="largest N simulated rank by rank where the schedule needs it "
                        "(temporal structure, detours); past it the marginal approximation")


def cmd_simulate(args: argparse.Namespace) -> int:
    from jitter_models.errors import BadInput
    from jitter_models.simulate import DEFAULT_CUTOFF

    from .cli_sweeps import _load_spec_arg
    from .simulation import run_simulation, stderr_progress
    from .simulation_report import write_simulation
    from .spec import MAX_SIMULATED_WORLD

    cutoff = DEFAULT_CUTOFF if args.cutoff is None else args.cutoff
    if cutoff < 1:
        raise BadInput(f"--cutoff: must be >= 1, got {cutoff}")
    spec, _ = _load_spec_arg(args.spec, max_world=MAX_SIMULATED_WORLD)
    out = Path(args.out or Path("runs") / spec.name / "simulation")
    data = run_simulation(spec, steps=args.steps, cutoff=cutoff, progress=stderr_progress)
    write_simulation(out, data, args.json)
    if all(r["compute_us"] == 0 for r in data["rows"]):
        print("jitterlab: note: the workload gives the simulator no compute (tp_decode "
              "with compute = real or none, a benchmark): the steps are communication and "
              "jitter only, and the efficiency figures compare those alone", file=sys.stderr)
    print(f"simulation: {out / 'simulation.json'}, report {out / 'report.html'}")
    for u in data["useful"]:
        print(f"  {u['schedule']} (batch {u['batch']}): useful parallelism "
              f"{u['useful_parallelism'] or 'n/a'}, N_opt {u['n_opt']}")
    return 0
