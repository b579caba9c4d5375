"""The simulation's files: ``simulation.json`` (the rows and the scaling figures),
``simulation.csv``, ``report.md`` with its PNG plots, and a self-contained
``report.html``, written atomically as the sweep report is (``report.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jitter_models.syntax import escape

from .atomic import write_bytes_atomic, write_text_atomic
from .csv_cells import csv_text
from .page import Definitions, Figure, Page, Palette, Section, Summary, Table, to_html, to_markdown
from .report_plots import figure, n_axis, save, style

DEFINITIONS = [
    ("step latency", "the time from a step's start (all ranks leave the previous step's "
                     "barrier) to its end on its slowest rank"),
    ("mean, p50 .. p999", "over the simulated steps (nearest rank), each with its Monte "
                          "Carlo standard error (_se_us): batch means for the mean, binomial "
                          "order statistics corrected for dependence for percentiles"),
    ("compute, wait, comm", "per step: the sites' compute; waiting for the slowest (delays, "
                            "detours and skew); the collectives' own time without jitter"),
    ("speedup, efficiency", "S(N) = N share(N) T(1)/T(N), E(N) = S(N)/N, from the mean "
                            "(efficiency) and the p99 (efficiency_p99); share(N) is the "
                            "workload's compute share: 1/N strong scaling, 1 weak scaling"),
    ("useful parallelism", "the largest simulated N with E(N) >= 0.5; N_opt: the N with the "
                           "lowest p99 step latency"),
    ("method", "max-sampling: exact max-of-N draws; rank-by-rank: every rank simulated; "
               "marginal: site maxima from their marginal law, independent across sites "
               "(past the rank-by-rank cutoff)"),
]


def write_simulation(out: str | Path, data: dict[str, Any], json_file: str | None = None
                     ) -> None:
    """Every file of the simulation under ``out`` (and the JSON also at ``json_file``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1, allow_nan=False) + "\n"
    plots = _plots(data)
    for name, png in plots.items():
        write_bytes_atomic(out / name, png)
    write_text_atomic(out / "simulation.csv", csv_text(data["rows"], list(data["rows"][0])))
    write_text_atomic(out / "report.md", _markdown(data, plots))
    write_text_atomic(out / "report.html", _html(data, plots))
    write_text_atomic(out / "simulation.json", text)
    if json_file:
        write_text_atomic(Path(json_file), text)


def _series(rows: list[dict]) -> list[tuple[str, int]]:
    seen: dict[tuple[str, int], None] = {}
    for r in rows:
        seen.setdefault((r["schedule"], r["batch"]), None)
    return list(seen)


def _label(key: tuple[str, int], rows: list[dict]) -> str:
    return key[0] if len({r["batch"] for r in rows}) == 1 else f"{key[0]} (batch {key[1]})"


CAPTIONS = {
    "sim_latency_vs_n.png": (
        "Simulated step latency (ms) against world size N, one colour per schedule: p50 "
        "solid, p99 dashed with ±2 SE bars, a band from p50 to p99.9, N on a log2 axis.",
        "Read the band's upper edge and the dashed p99: how fast the tail grows with N "
        "against the median. A band that widens with N is the max over N ranks reaching "
        "further into the jitter's tail."),
    "sim_efficiency_vs_n.png": (
        "Simulated efficiency E(N) against world size N, one colour per schedule: mean "
        "solid, p99 dashed, a dotted line at 0.5.",
        "Read where each solid line crosses the dotted 0.5: the largest N above it is the "
        "schedule's useful parallelism; the dashed p99 line is the same for the tail."),
}


def _plots(data: dict[str, Any]) -> dict[str, bytes]:
    """The two plots, colours by schedule (the spec's order: the run report's colours)."""
    with style():
        return {"sim_latency_vs_n.png": _latency(data["rows"]),
                "sim_efficiency_vs_n.png": _efficiency(data["rows"])}


def _latency(rows: list[dict]) -> bytes:
    palette = Palette(r["schedule"] for r in rows)
    fig, ax = figure(3.8)
    for key in _series(rows):
        mine = [r for r in rows if (r["schedule"], r["batch"]) == key]
        n = [r["world_size"] for r in mine]
        colour = palette.colour(key[0])

        def ms(k: str, mine: list[dict] = mine) -> list[float]:
            return [float("nan") if r[k] is None else r[k] / 1e3 for r in mine]

        ax.plot(n, ms("p50_us"), marker="o", color=colour, label=_label(key, rows))
        ax.fill_between(n, ms("p50_us"), ms("p999_us"), color=colour, alpha=0.15, lw=0)
        ax.errorbar(n, ms("p99_us"), yerr=[2 * e for e in ms("p99_se_us")], ls="--",
                    color=colour, capsize=2, lw=1)
    n_axis(ax, [r["world_size"] for r in rows])
    ax.set_ylabel("step latency (ms)")
    ax.legend()
    return save(fig)


def _efficiency(rows: list[dict]) -> bytes:
    palette = Palette(r["schedule"] for r in rows)
    fig, ax = figure()
    for key in _series(rows):
        mine = [r for r in rows if (r["schedule"], r["batch"]) == key
                and r["efficiency"] is not None]
        colour = palette.colour(key[0])
        ax.plot([r["world_size"] for r in mine], [r["efficiency"] for r in mine],
                marker="o", color=colour, label=_label(key, rows))
        ax.plot([r["world_size"] for r in mine], [r["efficiency_p99"] for r in mine],
                ls="--", color=colour, alpha=0.7)
    n_axis(ax, [r["world_size"] for r in rows])
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_ylabel("efficiency E(N): mean solid, p99 dashed")
    ax.legend()
    return save(fig)


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e6 else f"{v:.3e}"
    return escape(str(v))


def _figure(plots: dict[str, bytes], name: str) -> tuple:
    return (Figure(name, plots[name], *CAPTIONS[name]),) if name in plots else ()


def _page(data: dict[str, Any], plots: dict[str, bytes]) -> Page:
    """The simulation report: the run report's page design, on simulated points."""
    net = data["network"]
    intra = net.get("intra", {})
    meta = (f"{escape(data['workload'])}, algorithm {data['algorithm']}, {data['steps']} "
            f"simulated steps per point, seed {data['seed']}; network: alpha {net['alpha']}, "
            f"{net['bandwidth_gbps']} GB/s between nodes"
            + (f", alpha {intra['alpha']}, {intra['bandwidth_gbps']} GB/s inside a node"
               if intra else "") + f", {data['ranks_per_node']} ranks per node.")
    rows = data["rows"]
    sections = (
        Section("How does step latency grow with N?", (
            "Step latency from the simulator, mean and percentiles over the simulated "
            "steps, each with its Monte Carlo standard error (µs)."), (
            *_figure(plots, "sim_latency_vs_n.png"),
            Table.of("Every simulated point (raw)", rows, [
                "schedule", "batch", "world_size", "method", "mean_us", "mean_se_us",
                "p50_us", "p99_us", "p99_se_us", "p999_us"], _fmt, collapsible=True))),
        Section("How efficient is scaling?", (
            "Efficiency E(N) against the same schedule simulated at N = 1."), (
            *_figure(plots, "sim_efficiency_vs_n.png"),
            Table.of("Useful parallelism per schedule", data["useful"], [
                "schedule", "batch", "useful_parallelism", "threshold", "n_opt"], _fmt),
            Table.of("Efficiency per point", rows, [
                "schedule", "batch", "world_size", "efficiency", "efficiency_p99"], _fmt,
                collapsible=True))),
        Section("Where does the time go?", (
            "Per step: the sites' compute, waiting for the slowest rank (delays, detours, "
            "skew) and the collectives' own time (µs)."), (
            Table.of("Step time per point", rows, [
                "schedule", "batch", "world_size", "compute_us", "wait_us", "comm_us"],
                _fmt, collapsible=True),)),
        Section("Definitions", blocks=(Definitions(tuple(DEFINITIONS)),)))
    return Page(f"jitterlab simulation: {escape(data['name'])}", meta,
                Summary(_facts(data), _headlines(data)), sections)


def _facts(data: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    ns = sorted({r["world_size"] for r in data["rows"]})
    return (("simulated N", f"{ns[0]} .. {ns[-1]} ({len(ns)} world sizes)"),
            ("steps per point", str(data["steps"])))


def _headlines(data: dict[str, Any]) -> tuple[str, ...]:
    """Per schedule (and batch): useful parallelism, N_opt, the largest N's p99."""
    out = []
    for u in data["useful"]:
        mine = [r for r in data["rows"] if (r["schedule"], r["batch"]) == (u["schedule"],
                                                                         u["batch"])]
        last = max(mine, key=lambda r: r["world_size"])
        out.append(f"{escape(u['schedule'])} (batch {u['batch']}): useful parallelism "
                   f"{_fmt(u['useful_parallelism'])} (E >= {u['threshold']}), N_opt "
                   f"{u['n_opt']}; at N = {last['world_size']} p99 step latency "
                   f"{_fmt(last['p99_us'])} µs, efficiency {_fmt(last['efficiency'])}.")
    return tuple(out)


def _markdown(data: dict[str, Any], plots: dict[str, bytes]) -> str:
    """report.md: the page in Markdown, plots linked as the PNG files beside it."""
    return to_markdown(_page(data, plots))


def _html(data: dict[str, Any], plots: dict[str, bytes]) -> str:
    """report.html: the page, self-contained."""
    return to_html(_page(data, plots))
