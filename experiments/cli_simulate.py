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
                    "report.html. A spec with a [study] table (the preset "
                    "bandwidth-vs-predictability) runs that study instead: study.json, "
                    "study.csv, points.csv and its report.")
    s.add_argument("spec", help="SPEC.toml (the same as for run, plus [network]), or a "
                                "study spec")
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
    doc = _study_doc(args.spec)
    if doc is not None:
        return _cmd_study(args, doc)
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


def _study_doc(text: str) -> dict | None:
    """The spec's document when it is a study (a ``[study]`` table), else None."""
    from .maxtable import load_preset, load_toml_file, preset_names

    if not Path(text).exists() and text in preset_names():
        doc = load_preset(text)
    elif Path(text).is_file():
        doc = load_toml_file(text)
    else:
        return None  # the spec loader says what is wrong
    return doc if "study" in doc else None


def _cmd_study(args: argparse.Namespace, doc: dict) -> int:
    """``simulate`` of a study spec (experiments/study.py): study.json and its report."""
    from jitter_models.errors import BadInput

    from .study import parse_study, run_study, stderr_progress
    from .study_report import write_study

    if args.steps is not None or args.cutoff is not None:
        raise BadInput("--steps, --cutoff: a study sets its steps in [study] (steps) and "
                       "simulates with its own engine (no cutoff)")
    study = parse_study(doc, default_name=Path(args.spec).stem)
    out = Path(args.out or Path("runs") / study.name)
    data = run_study(study, progress=stderr_progress)
    write_study(out, data, args.json)
    print(f"study: {out / 'study.json'}, report {out / 'report.html'}")
    for row in data["rows"]:
        print(f"  {row['workload']} {row['model']} {row['variant']}: crossover_n "
              f"{row['crossover_n']}, crossover_n_p99 {row['crossover_n_p99']}, useful N "
              f"steady {row['useful_n_steady']} fast {row['useful_n_fast']}")
    return 0
