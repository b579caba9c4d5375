"""The CLI's single-host tools: maxtable, describe, bench, calibrate, doctor, worker."""

from __future__ import annotations

import argparse
import os

from .cli_util import bad, write_json


def cmd_maxtable(args: argparse.Namespace) -> int:
    from jitter_models import check_unique_names, parse_schedule, schedules_from_toml
    from jitter_models.errors import reading_input

    from .maxtable import DEFAULT_NS, load_preset, load_toml_file, max_table, render_table

    with reading_input():
        if args.jitter:
            schedules = check_unique_names([parse_schedule(s) for s in args.jitter])
        elif args.spec:
            schedules = schedules_from_toml(load_toml_file(args.spec))
        else:
            schedules = schedules_from_toml(load_preset(args.preset or "jitter-zoo"))
    if args.ranks_per_node < 1:
        raise bad(f"ranks-per-node: must be >= 1, got {args.ranks_per_node}")
    if args.seed < 0:
        raise bad(f"seed: must be >= 0, got {args.seed}")
    ns = args.n or list(DEFAULT_NS)
    rows = max_table(schedules, ns, args.stat, seed=args.seed,
                     ranks_per_node=args.ranks_per_node)
    names = [s.name for s in schedules]
    # The file first: if it cannot be written, the run fails before printing a result.
    write_json(args.json, {"stat": args.stat, "unit": "us",
                            "schedules": [s.to_table() for s in schedules], "rows": rows})
    means = [s.temporal.marginal(s.dist).mean() for s in schedules]
    print(render_table(rows, names, means))
    print("\nmean: E[delay] of one ordinary (non-straggler) rank. Each cell: the "
          f"{'expected value' if args.stat == 'mean' else args.stat} of the max over the "
          "N ranks' delays at one collective (exact, from the CDFs).")
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    from jitter_models import expected_max, format_us, max_quantile, parse
    from jitter_models.errors import reading_input

    with reading_input():
        dist = parse(args.dist)
    quantiles = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p999": 0.999, "p9999": 0.9999}
    row: dict = {"dist": str(dist), "mean_us": dist.mean() * 1e6, "std_us": dist.std() * 1e6}
    row.update({f"{k}_us": float(dist.ppf(q)) * 1e6 for k, q in quantiles.items()})
    row["max"] = [{"n": n, "mean_us": expected_max(dist, n) * 1e6,
                   "p99_us": float(max_quantile(dist, n, 0.99)) * 1e6} for n in args.n]
    write_json(args.json, row)  # before printing: a failed write shows no result
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


def cmd_bench(args: argparse.Namespace) -> int:
    from collectives.backends import elem_size
    from collectives.ops import get_op, size_sweep
    from jitter_models import parse_schedule
    from jitter_models.errors import reading_input
    from launch.limits import check_ranks_per_host, host_limit
    from launch.plan import Plan
    from launch.supervise import launch_argv

    from .atomic import check_writable
    from .bench import default_out_dir, render_result, run_bench, write_outputs

    # Bad input fails here, before any process starts or any file is written.
    with reading_input():
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
                params={"colls": args.coll, "sizes": sizes, "redop": args.redop,
                        "iters": args.iters, "warmup": args.warmup, "check": args.check},
                backend=args.backend, seed=args.seed, jitter=args.jitter,
                algorithms=args.algo, ranks_per_node=args.ranks_per_node, dtype=args.dtype,
                timeout_s=args.timeout, record_hops=args.record_hops)
    result = run_bench(plan, launcher=args.launcher, nproc=args.nproc)
    write_outputs(result, args.json, args.csv)
    print(render_result(result))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from collectives.calibrate import calibrate, render

    if args.samples < 1:
        raise bad(f"samples: must be an integer >= 1, got {args.samples}")
    rows = calibrate(args.injector, samples=args.samples)
    write_json(args.json, {"injector": args.injector, "rows": rows})
    print(f"injector {args.injector}: requested vs achieved delay (t_arrive - t_start), µs")
    print(render(rows))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .doctor import probe, render, run_checks

    checks = probe()
    if args.run:
        from .bench import default_out_dir

        out = args.out or default_out_dir().replace(f"bench{os.sep}", f"doctor{os.sep}", 1)
        checks = checks + run_checks(out, checks=checks)
    write_json(args.json, {"checks": [asdict(c) for c in checks]})
    print(render(checks))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from launch.context import die_with_torchrun

    die_with_torchrun()  # before the heavy imports below: a torchrun killed meanwhile
    from launch.worker import run

    return run(args.plan)
