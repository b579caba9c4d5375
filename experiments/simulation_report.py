"""The simulation's files: ``simulation.json`` (the rows and the scaling figures),
``simulation.csv``, ``report.md`` with its PNG plots, and a self-contained
``report.html``, written atomically as the sweep report is (``report.py``)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from jitter_models.syntax import escape

from .atomic import write_bytes_atomic, write_text_atomic
from .csv_cells import csv_text
from .report_plots import _figure, _log2_x, _save

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


def _plots(data: dict[str, Any]) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    rows = data["rows"]
    fig, ax = _figure(4.5)
    for key in _series(rows):
        mine = [r for r in rows if (r["schedule"], r["batch"]) == key]
        n = [r["world_size"] for r in mine]

        def ms(k: str, mine: list[dict] = mine) -> list[float]:
            return [float("nan") if r[k] is None else r[k] / 1e3 for r in mine]

        (line,) = ax.plot(n, ms("p50_us"), marker="o", label=_label(key, rows))
        ax.fill_between(n, ms("p50_us"), ms("p999_us"), color=line.get_color(), alpha=0.15)
        ax.errorbar(n, ms("p99_us"), yerr=[2 * e for e in ms("p99_se_us")], ls="--",
                    color=line.get_color(), capsize=2, lw=1)
    _log2_x(ax)
    ax.set_xlabel("world size N (ranks)")
    ax.set_ylabel("step latency (ms): p50 (solid), p99 (dashed, ±2 SE),\nband p50 .. p99.9")
    ax.legend(fontsize=7)
    out = {"sim_latency_vs_n.png": _save(fig)}
    fig, ax = _figure()
    for key in _series(rows):
        mine = [r for r in rows if (r["schedule"], r["batch"]) == key
                and r["efficiency"] is not None]
        (line,) = ax.plot([r["world_size"] for r in mine], [r["efficiency"] for r in mine],
                          marker="o", label=_label(key, rows))
        ax.plot([r["world_size"] for r in mine], [r["efficiency_p99"] for r in mine],
                ls="--", color=line.get_color(), alpha=0.7)
    _log2_x(ax)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("world size N (ranks)")
    ax.set_ylabel("efficiency E(N): mean (solid), p99 (dashed)")
    ax.legend(fontsize=7)
    out["sim_efficiency_vs_n.png"] = _save(fig)
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e6 else f"{v:.3e}"
    return escape(str(v))


def _table(rows: list[dict], keys: list[str]) -> list[str]:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    return lines + ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in rows]


def _markdown(data: dict[str, Any], plots: dict[str, bytes]) -> str:
    net = data["network"]
    intra = net.get("intra", {})
    lines = [f"# jitterlab simulation: {escape(data['name'])}", "",
             f"{escape(data['workload'])}, algorithm {data['algorithm']}, "
             f"{data['steps']} simulated steps per point, seed {data['seed']}; network: "
             f"alpha {net['alpha']}, {net['bandwidth_gbps']} GB/s between nodes"
             + (f", alpha {intra['alpha']}, {intra['bandwidth_gbps']} GB/s inside a node"
                if intra else "") + f", {data['ranks_per_node']} ranks per node.", "",
             "## Scaling", ""]
    for u in data["useful"]:
        lines.append(f"- {escape(u['schedule'])} (batch {u['batch']}): useful parallelism "
                     f"{_fmt(u['useful_parallelism'])} (E >= {u['threshold']}), "
                     f"N_opt {u['n_opt']}")
    lines += ["", "## Step latency (µs, ± Monte Carlo SE)", ""]
    lines += _table(data["rows"], ["schedule", "batch", "world_size", "method", "mean_us",
                                   "mean_se_us", "p50_us", "p99_us", "p99_se_us", "p999_us",
                                   "compute_us", "wait_us", "comm_us", "efficiency",
                                   "efficiency_p99"])
    lines += ["", "## Plots", ""] + [f"![{n}]({n})" for n in plots]
    lines += ["", "## Definitions", ""] + [f"- **{k}**: {v}" for k, v in DEFINITIONS]
    return "\n".join(lines) + "\n"


def _html(data: dict[str, Any], plots: dict[str, bytes]) -> str:
    body = "<pre>" + html.escape(_markdown(data, {})) + "</pre>"
    imgs = "".join(f'<h3>{html.escape(n)}</h3><img alt="{html.escape(n)}" '
                   f'src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                   for n, png in plots.items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>jitterlab simulation"
            f"</title></head><body>{body}{imgs}</body></html>\n")
