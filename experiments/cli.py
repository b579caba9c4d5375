"""The ``jitterlab`` command line. Imports lazily: ``--help`` and the commands that need
no torch never import it (scripts call this many times)."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from collections.abc import Sequence

EXIT_BAD_INPUT = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of stdout went away


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are bad input too: one line, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "broadcast", "all_to_all")


def _colls(text: str) -> tuple[str, ...]:
    names = COLLECTIVES if text == "all" else tuple(t.strip() for t in text.split(","))
    bad = [n for n in names if n not in COLLECTIVES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown collective {bad[0] if bad else text!r} "
                                         f"(known: {', '.join(COLLECTIVES)}, all)")
    return names


def _algos(text: str) -> tuple[str, ...]:
    from jitter_models.algorithms import ALGORITHMS

    names = tuple(ALGORITHMS) if text == "all" else tuple(t.strip() for t in text.split(","))
    bad = [n for n in names if n not in ALGORITHMS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown algorithm {bad[0] if bad else text!r} "
                                         f"(known: {', '.join(ALGORITHMS)}, all)")
    return names


_MAX_RANKS_HELP = ("refuse more ranks than this on one host (default: 4 per usable core, "
                   "at most available memory / 333 MiB a rank; or "
                   "$JITTERLAB_MAX_RANKS_PER_HOST)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="jitterlab",
        description="Measure how tail latency in collective communication limits "
                    "useful parallelism.")
    p.add_argument("--version", action="version", version=f"jitterlab {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True,
                           parser_class=_Parser)

    m = sub.add_parser("maxtable", help="expected max of N delays per jitter model (µs)",
                       description="Tabulate the max over N ranks of one collective's "
                                   "injected delays, exactly, for each jitter schedule.")
    src = m.add_mutually_exclusive_group()
    src.add_argument("--preset", default=None, help="a preset of [[jitter]] tables "
                     "(default: jitter-zoo)")
    src.add_argument("--spec", metavar="FILE", help="a TOML file with [[jitter]] tables")
    src.add_argument("--jitter", action="append", metavar="SCHEDULE",
                     help="a one-line schedule, e.g. 'lognormal(median=50us, sigma=0.8)'; "
                          "repeatable")
    m.add_argument("--n", type=_ints, default=None, metavar="N,N,...",
                   help="world sizes (default: powers of 2 from 1 to 4096)")
    m.add_argument("--stat", default="mean", choices=["mean", "p50", "p90", "p99", "p999"],
                   help="statistic of the max (default: mean)")
    m.add_argument("--seed", type=int, default=0, help="seed for straggler choice by count")
    m.add_argument("--ranks-per-node", type=int, default=8,
                   help="ranks per node for scope = node (default: 8)")
    m.add_argument("--json", metavar="FILE", help="also write the rows as JSON")

    b = sub.add_parser("bench", help="time collectives on real processes (nccl-tests style)",
                       description="Time a collective over sizes on real ranks, with "
                                   "optional injected jitter; per-iteration values are the "
                                   "max over ranks.")
    b.add_argument("-b", "--min-bytes", default="1K", help="smallest size S (K, M, G suffixes;"
                   " default 1K)")
    b.add_argument("-e", "--max-bytes", default="64K", help="largest size S (default 64K)")
    b.add_argument("-f", "--step-factor", type=int, default=4, help="size multiplier (default 4)")
    b.add_argument("-o", "--redop", default="sum", choices=["sum", "prod", "max", "min", "avg"])
    b.add_argument("-d", "--dtype", default="float32",
                   choices=["float32", "float64", "float16", "bfloat16", "int32", "int64"])
    b.add_argument("-n", "--iters", type=int, default=100, help="timed iterations per size")
    b.add_argument("-w", "--warmup", type=int, default=10, help="untimed iterations per size")
    b.add_argument("-c", "--check", action="store_true", help="verify results (#wrong)")
    b.add_argument("--coll", default="all_reduce", type=_colls, metavar="COLL[,COLL]",
                   help="all_reduce, all_gather, reduce_scatter, broadcast, all_to_all, "
                        "a comma-separated list, or all (default all_reduce)")
    b.add_argument("--algo", default=("native",), type=_algos, metavar="ALGO[,ALGO]",
                   help="native (the backend's own call), ring, recursive_doubling, tree, "
                        "hierarchical, a comma-separated list, or all: each runs in the same "
                        "run, with the collectives it implements (default native)")
    b.add_argument("--ranks-per-node", type=int, default=8, metavar="K",
                   help="group ranks into nodes of K (hierarchical, scope = node), even "
                        "on one host (default 8)")
    b.add_argument("--backend", default="auto", choices=["auto", "gloo", "nccl", "mpi"])
    b.add_argument("--launcher", default="local", choices=["local", "torchrun", "mpirun", "srun"])
    b.add_argument("--nproc", type=int, default=1, help="number of ranks (default 1)")
    b.add_argument("--max-ranks-per-host", type=int, metavar="N", help=_MAX_RANKS_HELP)
    b.add_argument("--jitter", metavar="SCHEDULE", help="one-line jitter schedule injected "
                   "before each iteration, e.g. 'exponential(20us)'")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--timeout", type=float, default=300.0, help="seconds before a rank that "
                   "waits is a failure (default 300)")
    b.add_argument("--out", metavar="DIR", help="run directory (default runs/bench/<time>)")
    b.add_argument("--json", metavar="FILE")
    b.add_argument("--csv", metavar="FILE")

    c = sub.add_parser("calibrate", help="injected delay fidelity (requested vs achieved)",
                       description="Inject constants of 1, 10, 100 and 1000 µs and one "
                                   "lognormal on this process and compare the achieved "
                                   "delay, as a rank records it, with the request.")
    c.add_argument("--injector", default="host", choices=["host", "none"])
    c.add_argument("--samples", type=int, default=1000, help="delays per row (default 1000)")
    c.add_argument("--json", metavar="FILE")

    dr = sub.add_parser("doctor", help="what backends, launchers, MPI, GPUs are here",
                        description="Which backends, launchers, MPI implementation, GPUs "
                                    "and NCCL version are here and what each lacks.")
    dr.add_argument("--run", action="store_true", help="also run a tiny checked "
                    "all-reduce on each available backend")
    dr.add_argument("--out", metavar="DIR", default=None,
                    help="run directory for --run (default runs/doctor/<time>)")
    dr.add_argument("--json", metavar="FILE")

    r = sub.add_parser("run", help="run a sweep spec and write its scaling report",
                       description="Run every point of a TOML sweep (resumable), then "
                                   "write report.md, report.html and CSV tables.")
    r.add_argument("spec", help="SPEC.toml, or a preset name such as quickstart")
    r.add_argument("--out", metavar="DIR", help="result folder (default runs/<spec name>)")
    r.add_argument("--max-ranks-per-host", type=int, metavar="N", help=_MAX_RANKS_HELP)
    g = r.add_argument_group(
        "several nodes", "One agent per node, node 0 coordinating (it hosts a store on "
        "--master and writes the results). Inside a SLURM allocation of several nodes a "
        "plain 'jitterlab run SPEC' starts the agents with srun; elsewhere start each "
        "node's command (--print-commands prints them).")
    g.add_argument("--nnodes", type=int, metavar="K", help="nodes in the sweep")
    g.add_argument("--node-rank", metavar="R", help="this node's rank, 0..K-1, or 'slurm' "
                   "(SLURM_NODEID)")
    g.add_argument("--master", metavar="HOST:PORT", help="node 0's address as the other "
                   "nodes reach it, and a free port there for the store (default: this "
                   "host, port 29400; under SLURM the first node and a port from the job id)")
    g.add_argument("--join-timeout", type=float, default=600.0, metavar="S",
                   help="seconds node 0 waits for the others to join (default 600)")
    g.add_argument("--print-commands", action="store_true",
                   help="print each node's command (the srun line under SLURM) and exit")
    rp = sub.add_parser("report", help="(re)write the report of a result folder")
    rp.add_argument("dir")
    sh = sub.add_parser("show", help="a result folder's scaling table in the terminal")
    sh.add_argument("dir")
    for sp in (rp, sh):
        sp.add_argument("--skip-bad", action="store_true",
                        help="leave out points whose files do not read back (listed), "
                             "instead of stopping at the first with exit code 2")

    v = sub.add_parser("validate", help="check a sweep spec (fast: no torch, no processes)",
                       description="Parse and validate a TOML sweep spec and list its points.")
    v.add_argument("spec", help="SPEC.toml")
    v.add_argument("--nnodes", type=int, metavar="K",
                   help="also check that every point fits a K-node sweep")
    v.add_argument("--max-ranks-per-host", type=int, metavar="N", help=_MAX_RANKS_HELP)

    w = sub.add_parser("worker", help="run one rank of a plan (started by a launcher)")
    w.add_argument("plan", help="PLAN.json written by the parent")

    d = sub.add_parser("describe", help="moments and quantiles of a distribution",
                       description="Mean, std and quantiles of one delay, and the mean "
                                   "and p99 of the max of N of them, in µs.")
    d.add_argument("dist", help="e.g. 'lognormal(median=50us, sigma=0.8)'")
    d.add_argument("--n", type=_ints, default=[8, 64, 1024], metavar="N,N,...")
    d.add_argument("--json", metavar="FILE")
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jitterlab")
    except PackageNotFoundError:
        return "unknown"


def _strict(value: object) -> object:
    """Non-finite floats (an infinite E[max]) become null: strict JSON, readable by jq."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict(v) for v in value]
    return value


def _write_json(path: str | None, payload: object) -> None:
    if path:
        from .atomic import write_text_atomic

        write_text_atomic(path, json.dumps(_strict(payload), indent=2, allow_nan=False) + "\n")


def _cmd_maxtable(args: argparse.Namespace) -> int:
    from jitter_models import check_unique_names, parse_schedule, schedules_from_toml

    from .maxtable import DEFAULT_NS, load_preset, load_toml_file, max_table, render_table

    if args.jitter:
        schedules = check_unique_names([parse_schedule(s) for s in args.jitter])
    elif args.spec:
        schedules = schedules_from_toml(load_toml_file(args.spec))
    else:
        schedules = schedules_from_toml(load_preset(args.preset or "jitter-zoo"))
    if args.ranks_per_node < 1:
        raise ValueError(f"ranks-per-node: must be >= 1, got {args.ranks_per_node}")
    if args.seed < 0:
        raise ValueError(f"seed: must be >= 0, got {args.seed}")
    ns = args.n or list(DEFAULT_NS)
    rows = max_table(schedules, ns, args.stat, seed=args.seed,
                     ranks_per_node=args.ranks_per_node)
    names = [s.name for s in schedules]
    # The file first: if it cannot be written, the run fails before printing a result.
    _write_json(args.json, {"stat": args.stat, "unit": "us",
                            "schedules": [s.to_table() for s in schedules], "rows": rows})
    means = [s.temporal.marginal(s.dist).mean() for s in schedules]
    print(render_table(rows, names, means))
    print("\nmean: E[delay] of one ordinary (non-straggler) rank. Each cell: the "
          f"{'expected value' if args.stat == 'mean' else args.stat} of the max over the "
          "N ranks' delays at one collective (exact, from the CDFs).")
    return 0


def _cmd_describe(args: argparse.Namespace) -> int:
    from jitter_models import expected_max, format_us, max_quantile, parse

    dist = parse(args.dist)
    quantiles = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p999": 0.999, "p9999": 0.9999}
    row: dict = {"dist": str(dist), "mean_us": dist.mean() * 1e6, "std_us": dist.std() * 1e6}
    row.update({f"{k}_us": float(dist.ppf(q)) * 1e6 for k, q in quantiles.items()})
    row["max"] = [{"n": n, "mean_us": expected_max(dist, n) * 1e6,
                   "p99_us": float(max_quantile(dist, n, 0.99)) * 1e6} for n in args.n]
    _write_json(args.json, row)  # before printing: a failed write shows no result
    print(f"{dist}\n  one delay, µs:")
    for k, v in row.items():
        if k.endswith("_us"):
            print(f"    {k[:-3]:>8} {format_us(v / 1e6)}")
    print("  max of N delays, µs:")
    print(f"    {'N':>8} {'E[max]':>12} {'p99':>12}")
    for m in row["max"]:
        print(f"    {m['n']:>8} {format_us(m['mean_us'] / 1e6):>12} "
              f"{format_us(m['p99_us'] / 1e6):>12}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from collectives.backends import elem_size
    from collectives.ops import get_op, size_sweep
    from jitter_models import parse_schedule
    from launch.limits import check_ranks_per_host, host_limit
    from launch.plan import Plan
    from launch.supervise import launch_argv

    from .atomic import check_writable
    from .bench import default_out_dir, render_result, run_bench, write_outputs

    # Bad input fails here, before any process starts or any file is written.
    if args.jitter:
        parse_schedule(args.jitter)
    launch_argv(args.launcher, args.nproc, ["check"])
    limit = host_limit(args.max_ranks_per_host)
    if args.launcher != "srun":  # srun places the ranks on the allocation's nodes
        check_ranks_per_host(args.nproc, "nproc", limit)
    sizes = size_sweep(args.min_bytes, args.max_bytes, args.step_factor)
    for coll in args.coll:
        for size in sizes:
            get_op(coll).counts(size, elem_size(args.dtype), args.nproc)
    for flag, path in (("json", args.json), ("csv", args.csv)):
        if path:
            check_writable(path, flag)
    plan = Plan(workload="microbench", out_dir=args.out or default_out_dir(),
                backend=args.backend, seed=args.seed, jitter=args.jitter, colls=args.coll,
                algorithms=args.algo, ranks_per_node=args.ranks_per_node, sizes=tuple(sizes),
                dtype=args.dtype, redop=args.redop, iters=args.iters, warmup=args.warmup,
                check=args.check, timeout_s=args.timeout)
    result = run_bench(plan, launcher=args.launcher, nproc=args.nproc)
    write_outputs(result, args.json, args.csv)
    print(render_result(result))
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from collectives.calibrate import calibrate, render

    rows = calibrate(args.injector, samples=args.samples)
    _write_json(args.json, {"injector": args.injector, "rows": rows})
    print(f"injector {args.injector}: requested vs achieved delay (t_arrive - t_start), µs")
    print(render(rows))
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .doctor import probe, render, run_checks

    checks = probe()
    if args.run:
        from .bench import default_out_dir

        out = args.out or default_out_dir().replace(f"bench{os.sep}", f"doctor{os.sep}", 1)
        checks = checks + run_checks(out, checks=checks)
    _write_json(args.json, {"checks": [asdict(c) for c in checks]})
    print(render(checks))
    return 0


def _load_spec_arg(text: str):
    from pathlib import Path

    from .maxtable import load_preset, load_toml_file, preset_names
    from .spec import parse_spec

    if not Path(text).exists() and text in preset_names():
        doc = load_preset(text)
        return parse_spec(doc, default_name=text), doc
    doc = load_toml_file(text)  # read once: the spec and the document are the same bytes
    return parse_spec(doc, default_name=Path(text).stem), doc


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _cmd_run(args: argparse.Namespace) -> int:
    import math
    import socket
    from pathlib import Path

    from launch.slurm import slurm_job

    from . import node_protocol as protocol
    from .agent import run_agent
    from .coordinator import Coordinator
    from .report import write_report
    from .sweep_loop import run_sweep

    spec, doc = _load_spec_arg(args.spec)
    out = Path(args.out or Path("runs") / spec.name)
    # SIGTERM (scancel, a SLURM time limit, kill) unwinds like Ctrl-C: ranks stopped, the
    # other nodes told, the lock released, so a rerun resumes cleanly.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    if args.nnodes is not None and args.nnodes < 1:
        raise ValueError(f"nnodes: must be >= 1, got {args.nnodes}")
    if not (math.isfinite(args.join_timeout) and 0 < args.join_timeout <= 86_400):
        raise ValueError(f"join-timeout: must be > 0 and at most 86400 s, got "
                         f"{args.join_timeout}")
    job = slurm_job() if args.nnodes is None else None
    if args.nnodes is None and args.node_rank is not None:
        raise ValueError("node-rank: needs --nnodes")
    nnodes = args.nnodes or (len(job.hosts) if job else 1)
    if args.master:
        host, port = protocol.parse_master(args.master)
    elif job is not None:
        host, port = job.hosts[0], job.port
    else:
        host, port = socket.getfqdn(), protocol.DEFAULT_PORT
    master = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if nnodes > 1:
        protocol.check_layout(spec, nnodes)
    _limit_ranks_per_host(spec, nnodes, args.max_ranks_per_host,  # srun: SLURM places them
                          here=job is None and not args.print_commands
                          and spec.launcher != "srun")
    if args.print_commands:
        spec_arg = str(Path(args.spec).resolve()) if Path(args.spec).exists() else args.spec
        out_arg = str(out.resolve())
        if job is not None:
            print(protocol.print_commands([protocol.srun_agents_argv(
                job, spec_arg, out_arg, master, join_timeout_s=args.join_timeout)],
                f"# SLURM job {job.job_id}: one agent on each of {len(job.hosts)} nodes"))
        elif nnodes > 1:
            argvs = [protocol.agent_argv(spec_arg, out_arg, nnodes=nnodes, node_rank=r,
                                         master=master, join_timeout_s=args.join_timeout)
                     for r in range(nnodes)]
            print(protocol.print_commands(argvs, f"# {nnodes} nodes: run line r on node r "
                                                 "(node 0 first or last, any order)"))
        else:
            print(protocol.print_commands([["jitterlab", "run", spec_arg, "--out", out_arg]],
                                          "# one node"))
        return 0
    if job is not None:  # a SLURM allocation of several nodes: one agent per node
        import subprocess

        spec_arg = str(Path(args.spec).resolve()) if Path(args.spec).exists() else args.spec
        exe = Path(sys.executable).with_name("jitterlab")
        argv = protocol.srun_agents_argv(job, spec_arg, str(out.resolve()), master,
                                         jitterlab=str(exe) if exe.exists() else "jitterlab",
                                         join_timeout_s=args.join_timeout)
        print(f"starting one agent per node: {' '.join(argv[:4])} ...", file=sys.stderr)
        from .node_store import agents_env

        # A fresh sweep key for this srun step's agents when the job set none (never on
        # the command line, where ps and SLURM's records would show it).
        return subprocess.run(argv, env=agents_env()).returncode
    if nnodes > 1:
        if args.node_rank is None:
            raise ValueError(f"node-rank: needed with --nnodes {nnodes} (0 on the node that "
                             "coordinates)")
        if not args.master:
            raise ValueError(f"master: needed with --nnodes {nnodes} (node 0's HOST:PORT, as "
                             "every node reaches it)")
        rank = protocol.node_rank_from(args.node_rank, nnodes)
        setup = protocol.NodeSetup(nnodes=nnodes, node_rank=rank, master_host=host,
                                   master_port=port, join_timeout_s=args.join_timeout)
        if rank > 0:
            return run_agent(spec, out, setup)
        coordinator = Coordinator(setup, spec)
        outcome = run_sweep(spec, doc, out, coordinator=coordinator)
    else:
        outcome = run_sweep(spec, doc, out)
    data = write_report(out)
    print(f"{outcome.done} points run, {outcome.skipped} already complete, "
          f"{len(outcome.failed)} failed")
    print(f"report: {out / 'report.html'} (and report.md, CSV tables, plots)")
    for line in data["headlines"].values():
        print(f"  {line}")
    return 1 if outcome.failed else 0


def _skipped_lines(data: dict) -> list[str]:
    return [f"skipped point {s['point']}: {s['file']}: {s['why']}" for s in data["skipped"]]


def _cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .report import write_report

    data = write_report(args.dir, skip_bad=args.skip_bad)
    for line in _skipped_lines(data):
        print(f"jitterlab: warning: {line}", file=sys.stderr)
    print(f"report: {Path(args.dir) / 'report.html'}")
    for line in data["headlines"].values():
        print(f"  {line}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from .report import build

    data = build(args.dir, skip_bad=args.skip_bad)
    for line in _skipped_lines(data):
        print(f"jitterlab: warning: {line}", file=sys.stderr)
    head = f"{'schedule':>14}{'N':>6}{'mean_ms':>10}{'p99_ms':>10}{'eff_mean':>10}{'tax_p99':>9}"
    print(head)
    for r in data["scaling"]:
        eff = "n/a" if r["efficiency_mean"] is None else f"{r['efficiency_mean']:.3f}"
        tax = "n/a" if r["jitter_tax_p99"] is None else f"{r['jitter_tax_p99']:.3f}"
        print(f"{r['schedule']:>14}{r['world_size']:>6}{r['mean_s'] * 1e3:>10.3f}"
              f"{r['p99_s'] * 1e3:>10.3f}{eff:>10}{tax:>9}")
    return 0


def _limit_ranks_per_host(spec, nnodes: int, override: int | None, *, here: bool = True
                          ) -> None:
    """Refuse, before anything starts, a sweep that puts more ranks on one host than it
    can hold: a one-node sweep runs every rank of a point here; a K-node sweep runs
    ranks_per_node (fewer for a point that fits one node) on each host. ``here``: ranks
    start on this host (not so for a parent that only starts agents with srun)."""
    from launch.limits import ENV, check_ranks_per_host, host_limit

    limit = host_limit(override)
    if override is not None:
        os.environ[ENV] = str(override)  # the agents srun starts on each node inherit it
    if here and nnodes > 1:
        check_ranks_per_host(max(min(n, spec.ranks_per_node) for n in spec.world_sizes),
                             "ranks_per_node", limit)
    elif here:
        check_ranks_per_host(max(spec.world_sizes), "world_sizes", limit)


def _cmd_validate(args: argparse.Namespace) -> int:
    from .spec import load_spec
    from .sweep import expand

    spec = load_spec(args.spec)
    points = expand(spec)
    where = ""
    if args.nnodes is not None:
        from .node_protocol import check_layout, layout

        if args.nnodes < 1:
            raise ValueError(f"nnodes: must be >= 1, got {args.nnodes}")
        if args.nnodes > 1:
            check_layout(spec, args.nnodes)
        where = f", fits {args.nnodes} node{'s' * (args.nnodes > 1)}"
    from jitter_models.syntax import escape  # names are checked; escape anything printed

    try:  # validate starts nothing: a spec meant for bigger hosts is still a valid spec
        _limit_ranks_per_host(spec, args.nnodes or 1, args.max_ranks_per_host,
                              here=spec.launcher != "srun")
        host_note = ""
    except ValueError as exc:
        if args.max_ranks_per_host is not None:
            raise
        host_note = f"  note: not on this host: {escape(exc)}"
    from jitter_models.units import MAX_DELAY_S, format_duration

    memory = _real_compute_memory(spec)  # raises when a rank's shard cannot fit
    print(f"{escape(args.spec)}: ok: {escape(spec.name)}, {spec.workload} "
          f"{escape(spec.model.name)} ({spec.compute} compute), world sizes "
          f"{list(spec.world_sizes)}, {len(spec.schedules)} schedules, {len(points)} "
          f"points{where}")
    if host_note:
        print(host_note)
    if memory:
        print(f"  {memory}")
    for s in spec.schedules:  # a clip that will bite (more than one draw in a billion)
        laws = [s.temporal.marginal(s.dist)] + ([s.stragglers.dist] if s.stragglers else [])
        p_clip = max(float(d.sf(MAX_DELAY_S)) for d in laws)
        if p_clip > 1e-9:
            print(f"  note: {escape(s.name)}: P(delay > {format_duration(MAX_DELAY_S)}) = "
                  f"{p_clip:.3g}: such draws are clipped to {format_duration(MAX_DELAY_S)} "
                  "(the maximum delay) and counted as delays_clipped")
    for p in points:
        nodes = ""
        if args.nnodes and args.nnodes > 1:
            k, per = layout(p.world_size, spec.ranks_per_node)
            nodes = f" on {k} node{'s' * (k > 1)} x {per}"
        print(f"  {p.id}  N={p.world_size:<5} batch={p.batch:<4} "
              f"{escape(p.schedule.name)}{nodes}")
    return 0


def _real_compute_memory(spec) -> str | None:
    """With real compute, what one rank holds at each world size (None otherwise); a
    ValueError when at some world size a rank's shard cannot fit its GPU (``hardware``)."""
    if spec.workload != "tp_decode" or spec.compute != "real":
        return None
    from collectives.tp_decode import hardware, memory_per_rank

    line, error = memory_per_rank(spec.model, spec.world_sizes, batch=max(spec.batches),
                                  steps=spec.steps, warmup=spec.warmup, dtype=spec.dtype,
                                  hw=hardware(spec.hardware))
    if error:
        raise ValueError(error)
    return line


def _cmd_worker(args: argparse.Namespace) -> int:
    from launch.context import die_with_torchrun

    die_with_torchrun()  # before the heavy imports below: a torchrun killed meanwhile
    from launch.worker import run

    return run(args.plan)


_COMMANDS = {"maxtable": _cmd_maxtable, "describe": _cmd_describe, "bench": _cmd_bench,
             "calibrate": _cmd_calibrate, "doctor": _cmd_doctor, "validate": _cmd_validate,
             "run": _cmd_run, "report": _cmd_report, "show": _cmd_show,
             "worker": _cmd_worker}


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the flush at interpreter exit finds no closed pipe
    (and prints no 'Exception ignored ... BrokenPipeError')."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout replaced by an object without a descriptor
        pass


def _printable(text: object) -> str:
    """One line, safe for a terminal: a name or a file's excerpt in a message may hold
    escapes (ANSI sequences) or line breaks; they are shown as escapes, never obeyed."""
    from jitter_models.syntax import escape

    return escape(str(text))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code = _COMMANDS[args.command](args)
        sys.stdout.flush()  # here, not at exit: a closed pipe must reach the handler below
        return code
    except BrokenPipeError:
        # `jitterlab validate spec.toml | head`: the reader has gone. Say nothing more; the
        # status is what a tool killed by SIGPIPE reports (128 + 13), as `yes | head` does.
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except ValueError as exc:
        print(f"jitterlab: error: {_printable(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("jitterlab: interrupted (every rank started was stopped)", file=sys.stderr)
        return 130
    except RecursionError:  # input nested past what a recursive parser can follow
        print("jitterlab: error: input nested too deeply", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RuntimeError as exc:  # a run that failed (launch.supervise.RunFailed and kin)
        print(f"jitterlab: run failed: {_printable(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. --json into a folder that does not exist
        where = f" {exc.filename!r}" if exc.filename else ""
        print(f"jitterlab: error: cannot write{_printable(where)}: "
              f"{_printable(exc.strerror or exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
