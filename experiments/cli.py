"""The ``jitterlab`` command line. Imports lazily: ``--help`` and the commands that need
no torch never import it (scripts call this many times)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import cli_fit, cli_noise, cli_simulate, cli_sweeps, cli_tools, cli_whatif
from .cli_util import int_list

EXIT_BAD_INPUT = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of stdout went away


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are bad input too: one line, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def _colls(text: str) -> tuple[str, ...]:
    from collectives.ops import OPS

    names = tuple(OPS) if text == "all" else tuple(t.strip() for t in text.split(","))
    bad = [n for n in names if n not in OPS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown collective {bad[0] if bad else text!r} "
                                         f"(known: {', '.join(OPS)}, all)")
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
    for add in (_add_maxtable, _add_bench, _add_tools, _add_sweeps, cli_simulate.add_parser,
                _add_trace, cli_fit.add_parser, cli_noise.add_parser, cli_whatif.add_parser):
        add(sub)
    return p


def _add_maxtable(sub) -> None:
    """maxtable and describe: exact order statistics, no processes."""
    from .maxtable import STATS

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
    m.add_argument("--n", type=int_list, default=None, metavar="N,N,...",
                   help="world sizes (default: powers of 2 from 1 to 4096)")
    m.add_argument("--stat", default="mean", choices=list(STATS),
                   help="statistic of the max (default: mean)")
    m.add_argument("--seed", type=int, default=0, help="seed for straggler choice by count")
    m.add_argument("--ranks-per-node", type=int, default=8,
                   help="ranks per node for scope = node (default: 8)")
    m.add_argument("--json", metavar="FILE", help="also write the rows as JSON")

    d = sub.add_parser("describe", help="moments and quantiles of a distribution",
                       description="Mean, std and quantiles of one delay, and the mean "
                                   "and p99 of the max of N of them, in µs.")
    d.add_argument("dist", help="e.g. 'lognormal(median=50us, sigma=0.8)'")
    d.add_argument("--n", type=int_list, default=[8, 64, 1024], metavar="N,N,...")
    d.add_argument("--json", metavar="FILE")


def _add_bench(sub) -> None:
    """bench: collectives on real ranks, nccl-tests style."""
    # Lists of valid values come from the modules that own them (numpy-light: --help
    # imports neither torch nor scipy).
    from collectives.backends import BACKENDS
    from collectives.ops import DTYPES, OPS, REDOPS
    from launch.commands import LAUNCHERS

    b = sub.add_parser("bench", help="time collectives on real processes (nccl-tests style)",
                       description="Time a collective over sizes on real ranks, with "
                                   "optional injected jitter; per-iteration values are the "
                                   "max over ranks.")
    b.add_argument("-b", "--min-bytes", default="1K", help="smallest size S (K, M, G suffixes;"
                   " default 1K)")
    b.add_argument("-e", "--max-bytes", default="64K", help="largest size S (default 64K)")
    b.add_argument("-f", "--step-factor", type=int, default=4, help="size multiplier (default 4)")
    b.add_argument("-o", "--redop", default="sum", choices=REDOPS)
    b.add_argument("-d", "--dtype", default="float32", choices=DTYPES)
    b.add_argument("-n", "--iters", type=int, default=100, help="timed iterations per size")
    b.add_argument("-w", "--warmup", type=int, default=10, help="untimed iterations per size")
    b.add_argument("-c", "--check", action="store_true", help="verify results (#wrong)")
    b.add_argument("--record-hops", action="store_true",
                   help="explicit algorithms: also write one row per message to "
                        "hops-NNNNN.parquet in the run directory (small runs)")
    b.add_argument("--coll", default="all_reduce", type=_colls, metavar="COLL[,COLL]",
                   help=f"{', '.join(OPS)}, a comma-separated list, or all (default "
                        "all_reduce)")
    b.add_argument("--algo", default=("native",), type=_algos, metavar="ALGO[,ALGO]",
                   help="native (the backend's own call), ring, recursive_doubling, tree, "
                        "hierarchical, a comma-separated list, or all: each runs in the same "
                        "run, with the collectives it implements (default native)")
    b.add_argument("--ranks-per-node", type=int, default=8, metavar="K",
                   help="group ranks into nodes of K (hierarchical, scope = node), even "
                        "on one host (default 8)")
    b.add_argument("--backend", default="auto", choices=BACKENDS)
    b.add_argument("--launcher", default="local", choices=LAUNCHERS)
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


def _add_tools(sub) -> None:
    """calibrate, doctor and worker."""
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

    w = sub.add_parser("worker", help="run one rank of a plan (started by a launcher)")
    w.add_argument("plan", help="PLAN.json written by the parent")


def _add_sweeps(sub) -> None:
    """run, report, show and validate: sweeps from a spec."""
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


def _add_trace(sub) -> None:
    """trace: a point's records as a Chrome trace (Perfetto, chrome://tracing)."""
    from .trace import MAX_EVENTS

    t = sub.add_parser("trace", help="a point's or a run's records as a Chrome trace",
                       description="Write the records of one point (points/<id>/) or of "
                                   "every point of a run folder as Chrome trace-event "
                                   "JSON: a process per point, a track per rank, slices "
                                   "for each step and site (compute, delay, detour, "
                                   "collective wait), and with record_hops the algorithm's "
                                   "steps and a flow arrow per message. Open it in "
                                   "ui.perfetto.dev or chrome://tracing.")
    t.add_argument("input", metavar="RUN_OR_POINT_DIR")
    t.add_argument("--out", required=True, metavar="FILE", help="the trace (JSON)")
    t.add_argument("--steps", metavar="A:B",
                   help="recorded (post-warm-up) steps A to B-1; default: every step, up "
                        f"to {MAX_EVENTS:,} events (whole steps from the first; a note "
                        "says where it cut)")


def _cmd_trace(args: argparse.Namespace) -> int:
    from .trace import cmd_trace

    return cmd_trace(args)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jitterlab")
    except PackageNotFoundError:
        return "unknown"


_COMMANDS = {"maxtable": cli_tools.cmd_maxtable, "describe": cli_tools.cmd_describe,
             "bench": cli_tools.cmd_bench, "calibrate": cli_tools.cmd_calibrate,
             "doctor": cli_tools.cmd_doctor, "worker": cli_tools.cmd_worker,
             "validate": cli_sweeps.cmd_validate, "run": cli_sweeps.cmd_run,
             "report": cli_sweeps.cmd_report, "show": cli_sweeps.cmd_show,
             "simulate": cli_simulate.cmd_simulate, "trace": _cmd_trace,
             "fit": cli_fit.cmd_fit, "noise": cli_noise.cmd_noise,
             "whatif": cli_whatif.cmd_whatif}


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
        from jitter_models.errors import BadInput

        if not isinstance(exc, BadInput):
            # A bug, not the input: its traceback, exit 1 (as any uncaught exception).
            print("jitterlab: internal error (a bug, not bad input; please report it with "
                  "the traceback below)", file=sys.stderr)
            raise
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
