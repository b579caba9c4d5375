"""The CLI's sweep commands: run, validate, report, show."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from .cli_util import bad


def _load_spec_arg(text: str, **kw):
    """(Spec, document) of a spec file or preset; ``kw`` goes to ``parse_spec``."""
    from pathlib import Path

    from .maxtable import load_preset, load_toml_file, preset_names
    from .spec import parse_spec

    if not Path(text).exists() and text in preset_names():
        doc = load_preset(text)
        return parse_spec(doc, default_name=text, **kw), doc
    doc = load_toml_file(text)  # read once: the spec and the document are the same bytes
    return parse_spec(doc, default_name=Path(text).stem, **kw), doc


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .sweep_loop import run_sweep

    spec, doc = _load_spec_arg(args.spec)
    out = Path(args.out or Path("runs") / spec.name)
    # SIGTERM (scancel, a SLURM time limit, kill) unwinds like Ctrl-C: ranks stopped, the
    # other nodes told, the lock released, so a rerun resumes cleanly.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    nodes = _Nodes.from_args(args, spec)
    if args.print_commands:
        print(nodes.commands(args, out))
        return 0
    if nodes.job is not None:  # a SLURM allocation of several nodes: one agent per node
        return nodes.start_slurm_agents(args, out)
    if nodes.nnodes > 1:
        outcome = nodes.run_agent(args, spec, doc, out)
        if isinstance(outcome, int):
            return outcome  # node > 0: its parts' exit code (node 0 writes the report)
    else:
        outcome = run_sweep(spec, doc, out)
    return _finish(outcome, out)


def _finish(outcome, out) -> int:
    from .report import write_report

    data = write_report(out)
    print(f"{outcome.done} points run, {outcome.skipped} already complete, "
          f"{len(outcome.failed)} failed")
    print(f"report: {out / 'report.html'} (and report.md, CSV tables, plots)")
    for line in data["headlines"].values():
        print(f"  {line}")
    return 1 if outcome.failed else 0


class _Nodes:
    """Where a ``jitterlab run`` runs: one node, K nodes (one agent each, node 0 at
    ``master``), or a SLURM allocation (its agents started with srun)."""

    def __init__(self, nnodes: int, host: str, port: int, job) -> None:
        self.nnodes, self.host, self.port, self.job = nnodes, host, port, job
        self.master = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @classmethod
    def from_args(cls, args: argparse.Namespace, spec) -> _Nodes:
        import math
        import socket

        from launch.slurm import slurm_job

        from . import node_protocol as protocol

        if args.nnodes is not None and args.nnodes < 1:
            raise bad(f"nnodes: must be >= 1, got {args.nnodes}")
        if not (math.isfinite(args.join_timeout) and 0 < args.join_timeout <= 86_400):
            raise bad(f"join-timeout: must be > 0 and at most 86400 s, got "
                      f"{args.join_timeout}")
        job = slurm_job() if args.nnodes is None else None
        if args.nnodes is None and args.node_rank is not None:
            raise bad("node-rank: needs --nnodes")
        nnodes = args.nnodes or (len(job.hosts) if job else 1)
        if args.master:
            host, port = protocol.parse_master(args.master)
        elif job is not None:
            host, port = job.hosts[0], job.port
        else:
            host, port = socket.getfqdn(), protocol.DEFAULT_PORT
        if nnodes > 1:
            protocol.check_layout(spec, nnodes)
        _limit_ranks_per_host(spec, nnodes, args.max_ranks_per_host,  # srun: SLURM places
                              here=job is None and not args.print_commands
                              and spec.launcher != "srun")
        return cls(nnodes, host, port, job)

    def commands(self, args: argparse.Namespace, out) -> str:
        """Each node's command line (--print-commands)."""
        from pathlib import Path

        from . import node_protocol as protocol

        spec_arg = str(Path(args.spec).resolve()) if Path(args.spec).exists() else args.spec
        out_arg = str(out.resolve())
        if self.job is not None:
            return protocol.print_commands([protocol.srun_agents_argv(
                self.job, spec_arg, out_arg, self.master, join_timeout_s=args.join_timeout)],
                f"# SLURM job {self.job.job_id}: one agent on each of {len(self.job.hosts)} "
                "nodes")
        if self.nnodes > 1:
            argvs = [protocol.agent_argv(spec_arg, out_arg, nnodes=self.nnodes, node_rank=r,
                                         master=self.master, join_timeout_s=args.join_timeout)
                     for r in range(self.nnodes)]
            return protocol.print_commands(argvs, f"# {self.nnodes} nodes: run line r on "
                                                  "node r (node 0 first or last, any order)")
        return protocol.print_commands([["jitterlab", "run", spec_arg, "--out", out_arg]],
                                       "# one node")

    def start_slurm_agents(self, args: argparse.Namespace, out) -> int:
        import subprocess
        from pathlib import Path

        from . import node_protocol as protocol
        from .node_store import agents_env

        spec_arg = str(Path(args.spec).resolve()) if Path(args.spec).exists() else args.spec
        exe = Path(sys.executable).with_name("jitterlab")
        argv = protocol.srun_agents_argv(self.job, spec_arg, str(out.resolve()), self.master,
                                         jitterlab=str(exe) if exe.exists() else "jitterlab",
                                         join_timeout_s=args.join_timeout)
        print(f"starting one agent per node: {' '.join(argv[:4])} ...", file=sys.stderr)
        # A fresh sweep key for this srun step's agents when the job set none (never on
        # the command line, where ps and SLURM's records would show it).
        return subprocess.run(argv, env=agents_env()).returncode

    def run_agent(self, args: argparse.Namespace, spec, doc, out):
        """This node's agent; node 0 coordinates and returns the sweep's outcome, the
        others their exit code (0: every part they ran succeeded)."""
        from . import node_protocol as protocol
        from .agent import run_agent
        from .coordinator import Coordinator
        from .sweep_loop import run_sweep

        if args.node_rank is None:
            raise bad(f"node-rank: needed with --nnodes {self.nnodes} (0 on the node that "
                      "coordinates)")
        if not args.master:
            raise bad(f"master: needed with --nnodes {self.nnodes} (node 0's HOST:PORT, as "
                      "every node reaches it)")
        rank = protocol.node_rank_from(args.node_rank, self.nnodes)
        setup = protocol.NodeSetup(nnodes=self.nnodes, node_rank=rank, master_host=self.host,
                                   master_port=self.port, join_timeout_s=args.join_timeout)
        if rank > 0:
            return run_agent(spec, out, setup)
        return run_sweep(spec, doc, out, coordinator=Coordinator(setup, spec))


def _skipped_lines(data: dict) -> list[str]:
    return [f"skipped point {s['point']}: {s['file']}: {s['why']}" for s in data["skipped"]]


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .report import write_report

    data = write_report(args.dir, skip_bad=args.skip_bad)
    for line in _skipped_lines(data):
        print(f"jitterlab: warning: {line}", file=sys.stderr)
    print(f"report: {Path(args.dir) / 'report.html'}")
    for line in data["headlines"].values():
        print(f"  {line}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
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


def cmd_validate(args: argparse.Namespace) -> int:
    from .spec import load_spec
    from .sweep import expand

    spec = load_spec(args.spec)
    points = expand(spec)
    where = ""
    if args.nnodes is not None:
        from .node_protocol import check_layout, layout

        if args.nnodes < 1:
            raise bad(f"nnodes: must be >= 1, got {args.nnodes}")
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

    memory, error = spec.work.check_fit(spec.params, spec.common())  # e.g. GPU memory
    if error:
        raise bad(error)
    print(f"{escape(args.spec)}: ok: {escape(spec.name)}, "
          f"{escape(spec.work.describe(spec.params))}, world sizes "
          f"{list(spec.world_sizes)}, {len(spec.schedules)} schedules, {len(points)} "
          f"points{where}")
    if host_note:
        print(host_note)
    if memory:
        print(f"  {memory}")
    work, top = spec.work, max(spec.world_sizes)
    sizes = [work.message_bytes(spec.params, batch=b, dtype=spec.dtype, world_size=top)
             for b in spec.batches]
    batches = f" (batch {', '.join(map(str, spec.batches))})" if len(sizes) > 1 else ""
    print(f"  per step: {work.sites_per_step(spec.params)} sites, messages of "
          f"{', '.join(f'{b} B' for b in sizes)}{batches}")
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
