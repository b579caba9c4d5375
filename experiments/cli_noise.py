"""``jitterlab noise``: this host's own noise per core (experiments/noise.py), as a table,
JSON, a histogram, detour traces for ``detours = "trace(...)"`` and a report."""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from .cli_util import bad, strict

HIST_PLOT = "noise_hist.png"
_COLS = (("core", "core"), ("interruptions", "count"), ("per_second", "per s"),
         ("p50_us", "p50 µs"), ("p90_us", "p90 µs"), ("p99_us", "p99 µs"),
         ("p999_us", "p99.9 µs"), ("p9999_us", "p99.99 µs"), ("max_us", "max µs"),
         ("lost_fraction", "time lost"), ("read_ns", "loop read ns"))


def add_parser(sub) -> None:
    n = sub.add_parser(
        "noise", help="measure this host's own noise per core (sysjitter / FTQ style)",
        description="Spin one pinned process per core, all at once, and record every gap "
                    "between two clock reads longer than the threshold: per core the "
                    "interruptions per second, their p50 .. p99.99 and max, the time lost; "
                    "a histogram, and a detour trace per core that detours = "
                    "\"trace(...)\" replays on real ranks and in the simulator.")
    n.add_argument("--cores", metavar="C,C,...", help="cores to spin on (default: every "
                   "core this process may use)")
    n.add_argument("--seconds", type=float, default=10.0, help="how long (default 10)")
    n.add_argument("--threshold", default="1us", help="the shortest gap that counts as an "
                   "interruption (default 1us: several times the spin loop's own time per "
                   "clock read, which the run measures and prints)")
    n.add_argument("--out", metavar="DIR", help="where to write (default runs/noise/<time>)")
    n.add_argument("--json", metavar="FILE", help="also write {\"rows\": [...]} here")


def _cores(text: str | None) -> list[int]:
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        list(range(os.cpu_count() or 1))
    if text is None:
        return allowed
    try:
        cores = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise bad(f"--cores: expected comma-separated core numbers, got {text!r}") from None
    missing = [c for c in cores if c not in allowed]
    if not cores or missing or len(set(cores)) != len(cores):
        raise bad(f"--cores: each core once, among those this process may use "
                  f"({', '.join(map(str, allowed))}), got {text!r}")
    return cores


def cmd_noise(args: argparse.Namespace) -> int:
    from jitter_models.units import parse_duration

    from . import noise

    cores = _cores(args.cores)
    if not (0 < args.seconds <= 3600):
        raise bad(f"--seconds: must be in (0, 3600], got {args.seconds:g}")
    try:
        threshold_s = parse_duration(args.threshold)
    except ValueError as exc:
        raise bad(f"--threshold: {exc}") from None
    if not 0 < threshold_s <= 1e-3:
        raise bad(f"--threshold: must be in (0, 1ms], got {args.threshold!r}")
    threshold_ns = int(round(threshold_s * 1e9))
    if args.json:
        from .atomic import check_writable

        check_writable(args.json, "--json")
    probe = noise.CoreNoise(-1, *noise.spin(0.05, threshold_ns))  # the loop's read time
    floor = noise.GRANULARITY_FACTOR * probe.read_ns
    if threshold_ns < floor:
        raise bad(f"--threshold: {args.threshold} is under {noise.GRANULARITY_FACTOR} x the "
                  f"spin loop's own time per clock read ({probe.read_ns:.0f} ns here): the "
                  f"loop's reads would count as interruptions; use at least {floor:.0f}ns")
    out = Path(args.out) if args.out else Path("runs") / "noise" / (
        time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{uuid.uuid4().hex[:6]}")
    print(f"noise: spinning on cores {', '.join(map(str, cores))} for {args.seconds:g} s, "
          f"threshold {threshold_ns} ns (the loop reads the clock every "
          f"{probe.read_ns:.0f} ns)", flush=True)
    results = noise.measure(cores, args.seconds, threshold_ns)
    rows = [r.row() for r in results]
    data = {"threshold_ns": threshold_ns, "seconds": args.seconds, "rows": rows,
            "host": os.uname().nodename if hasattr(os, "uname") else None}
    _write(out, results, data, args.json)
    print(table_text(rows))
    print(f"noise: {out / 'noise.json'}, traces {out}/detours-core<K>.tsv, report "
          f"{out / 'report.html'}")
    first = out / f"detours-core{cores[0]}.tsv"
    print(f'replay: detours = "trace(\'{first}\', period={args.seconds:.9g}s)"')
    return 0


def _cell(v: Any, key: str) -> str:
    if v is None:
        return "n/a"
    if key == "lost_fraction":
        return f"{v:.3%}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table_text(rows: list[dict]) -> str:
    lines = [" | ".join(label for _, label in _COLS)]
    lines += [" | ".join(_cell(r[k], k) for k, _ in _COLS) for r in rows]
    return "\n".join(lines)


def _hist(results: list) -> bytes:
    import matplotlib.pyplot as plt
    import numpy as np

    from .report_plots import save, style

    with style():
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        every = np.concatenate([r.durations_ns for r in results]) / 1e3
        if every.size:
            bins = np.geomspace(max(every.min(), 1e-3), every.max() * 1.01, 50)
            for r in results:
                if r.durations_ns.size:
                    ax.hist(r.durations_ns / 1e3, bins=bins, histtype="step", lw=1.5,
                            label=f"core {r.core} ({r.durations_ns.size} interruptions)")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no interruption over the threshold", ha="center",
                    transform=ax.transAxes)
        ax.set_xlabel("interruption duration (µs, log)")
        ax.set_ylabel("count (log)")
        fig.tight_layout()
        return save(fig)


def _write(out: Path, results: list, data: dict, json_file: str | None) -> None:
    from . import noise
    from . import page as pg
    from .atomic import write_bytes_atomic, write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    for r in results:
        write_text_atomic(out / f"detours-core{r.core}.tsv", noise.trace_text(r))
    png = _hist(results)
    write_bytes_atomic(out / HIST_PLOT, png)
    rows = data["rows"]
    worst = max(rows, key=lambda r: r["lost_fraction"] or 0)
    table = pg.Table.of("Per core", rows, [pg.Column(k, label) for k, label in _COLS],
                        lambda v: "n/a" if v is None else f"{v:.4g}" if isinstance(v, float)
                        else str(v))
    headline = (f"The noisiest core, {worst['core']}, lost "
                f"{_cell(worst['lost_fraction'], 'lost_fraction')} of its time in "
                f"{worst['interruptions']} interruptions (max "
                f"{_cell(worst['max_us'], 'max_us')} µs).")
    figure = pg.Figure(HIST_PLOT, png, "Histogram of interruption durations per core, "
                       "log-log.", "Read the right end: the rare long interruptions are "
                       "what the slowest of N ranks meets at every collective.")
    section = pg.Section("Interruptions per core", "A gap between two clock reads of a "
                         "pinned spinner longer than the threshold is an interruption.",
                         (table, figure))
    page = pg.Page(
        "jitterlab noise", f"{len(rows)} cores, {data['seconds']:g} s each, all at once; "
        f"threshold {data['threshold_ns']} ns",
        pg.Summary((("host", str(data["host"])), ("threshold", f"{data['threshold_ns']} ns"),
                    ("seconds", f"{data['seconds']:g}")), (headline,)), (section,))
    write_text_atomic(out / "report.md", pg.to_markdown(page))
    write_text_atomic(out / "report.html", pg.to_html(page))
    text = json.dumps(strict(data), indent=1, allow_nan=False) + "\n"
    write_text_atomic(out / "noise.json", text)
    if json_file:
        write_text_atomic(Path(json_file), text)
