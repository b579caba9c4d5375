"""``jitterlab whatif SOURCE``: a measured noise (``noise``, ``fit``, samples, a bench
run) to a scaling table and plots in one command (experiments/whatif.py)."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from .cli_util import bad, int_list


def add_parser(sub) -> None:
    from .whatif import DEFAULT_N, WORKLOADS

    w = sub.add_parser(
        "whatif", help="what a measured noise costs a workload at N = 8 .. 65,536",
        description="From a jitterlab noise folder (a detour trace), a jitterlab fit "
                    "folder or fit.json (the best fit's law), or anything fit reads "
                    "(fitted first): simulate the workload at N = 8 .. 65,536 with no "
                    "noise, the noise as measured, its tail halved (each delay or detour "
                    "above the p99 keeps half its excess) and its spikes removed; write "
                    "the scaling table, the simulator's report and whatif.json.")
    w.add_argument("source", help="a noise folder, a fit folder or fit.json, a samples "
                   "file, a records file or a bench run")
    w.add_argument("--workload", default="bsp", choices=list(WORKLOADS),
                   help="bsp: 10 x (100 µs compute + 8-byte all-reduce) a step (default); "
                        "tp_decode: Llama-3-70B on the h100 roofline; moe_decode: "
                        "DeepSeek-V3; dp_step: Llama-3-8B")
    w.add_argument("--n", type=int_list, default=",".join(map(str, DEFAULT_N)),
                   metavar="N,N,...",
                   help="world sizes (default: powers of 2 from 8 to 65536; those the "
                        "workload does not allow are left out, with the reason)")
    w.add_argument("--core", type=int, help="a noise folder: the core whose trace to use "
                   "(default: the one that lost the most time)")
    w.add_argument("--steps", type=int, default=200, help="simulated steps per point "
                   "(default 200)")
    w.add_argument("--alpha", default="5us", help="the network's per-hop latency "
                   "(default 5us)")
    w.add_argument("--bandwidth-gbps", type=float, default=50.0,
                   help="the network's bandwidth per rank and direction (default 50)")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--out", metavar="DIR", help="where to write (default runs/whatif/<name>)")
    w.add_argument("--json", metavar="FILE", help="also write whatif.json here")


def table_text(rows: list[dict]) -> str:
    lines = ["scenario | N | mean µs | p99 µs | mean cost | p99 cost"]
    for r in rows:
        lines.append(f"{r['scenario']} | {r['world_size']} | {r['mean_us']:.4g} | "
                     f"{r['p99_us']:.4g} | {r['mean_cost']:+.1%} | {r['p99_cost']:+.1%}")
    return "\n".join(lines)


def cmd_whatif(args: argparse.Namespace) -> int:
    import json

    from jitter_models.units import parse_duration

    from .atomic import check_writable, write_text_atomic
    from .cli_util import strict
    from .simulation import run_simulation, stderr_progress
    from .simulation_report import write_simulation
    from .spec import MAX_SIMULATED_WORLD, parse_spec
    from .whatif import allowed_sizes, read_source, scenarios, spec_doc, summary

    sizes = sorted(set(args.n))
    if sizes[-1] > 1 << 20:
        raise bad(f"--n: world sizes up to 1048576, got {sizes[-1]}")
    if not 1 <= args.steps <= 100_000:
        raise bad(f"--steps: must be in [1, 100000], got {args.steps}")
    try:
        parse_duration(args.alpha)
    except ValueError as exc:
        raise bad(f"--alpha: {exc}") from None
    if not args.bandwidth_gbps > 0:
        raise bad(f"--bandwidth-gbps: must be > 0, got {args.bandwidth_gbps:g}")
    if not Path(args.source).exists():
        raise bad(f"source: {args.source!r} does not exist")
    ok, why = allowed_sizes(args.workload, sizes)
    if not ok:
        raise bad(f"--n: {args.workload} allows none of "
                  f"{', '.join(map(str, sizes))}: {why[0]}")
    for reason in sorted(set(why)):
        print(f"whatif: left out: {reason}", file=sys.stderr)
    name = Path(args.source.rstrip("/")).stem or "source"
    out = Path(args.out) if args.out else Path("runs") / "whatif" / f"{name}-{args.workload}"
    if args.json:
        check_writable(args.json, "--json")
    if out.exists() and any(out.iterdir()):
        raise bad(f"--out: {str(out)!r} is not empty; choose another folder")
    src = read_source(args.source, args.core, out)
    made = out / "inputs"  # what this command makes: inputs/, and out with its new parents
    while not made.parent.exists():
        made = made.parent
    try:  # the derived inputs are written, then checked: on bad input nothing is left
        jitter = scenarios(src, out / "inputs")
        spec = parse_spec(spec_doc(args.workload, ok, jitter, steps=args.steps,
                                   alpha=args.alpha, bandwidth_gbps=args.bandwidth_gbps,
                                   seed=args.seed), max_world=MAX_SIMULATED_WORLD)
    except (ValueError, OSError):
        shutil.rmtree(made, ignore_errors=True)
        raise
    print(f"whatif: {src['source']}; {args.workload} at N = {', '.join(map(str, ok))}",
          file=sys.stderr)
    data = run_simulation(spec, progress=stderr_progress)
    write_simulation(out / "simulation", data)
    rows = summary(data)
    doc = {"source": src["source"], "workload": args.workload, "scenarios": jitter,
           "rows": rows, "simulation": str(out / "simulation" / "simulation.json")}
    text = json.dumps(strict(doc), indent=1, allow_nan=False) + "\n"
    write_text_atomic(out / "whatif.json", text)
    if args.json:
        write_text_atomic(Path(args.json), text)
    print(table_text(rows))
    print(f"whatif: {out / 'whatif.json'}, report {out / 'simulation' / 'report.html'}")
    return 0
