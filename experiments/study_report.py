"""The bandwidth-vs-predictability study's files (``study.py``): ``study.json``,
``study.csv`` (one row per workload x model x variant), ``points.csv`` (one per workload x
model x network x N), the PNG plots, ``report.md`` and a self-contained ``report.html``,
both rendered from one ``page.Page`` and written atomically as the simulation report is.

Where a variant has no crossover the page says so in words (the table writes "none" and
the verdict sentence beside it); a missing cell never stands for it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from jitter_models.syntax import escape

from .atomic import write_bytes_atomic, write_text_atomic
from .csv_cells import csv_text
from .page import (
    Bullets,
    Column,
    Definitions,
    Figure,
    Gallery,
    Note,
    Page,
    Palette,
    Paragraph,
    Section,
    Summary,
    Table,
    to_html,
    to_markdown,
)
from .report_plots import figure, n_axis, save, slug, style
from .study import ROW_KEYS

STUDY_TABLE = "The verdict per workload, model and fast variant"
SENSITIVITY = "Sensitivity: how much jitter does 2x bandwidth carry?"
N_SHADES = ("#3b4cc0", "#8a6fbf", "#b40426", "#555555", "#2ca02c")  # one per sensitivity N
N_MARKERS = "osD^v"
TIERS = (("intra", "inside a node"), ("inter", "between nodes"))


def write_study(out: str | Path, data: dict[str, Any], json_file: str | None = None) -> None:
    """Every file of the study under ``out`` (and the JSON also at ``json_file``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1, allow_nan=False) + "\n"
    plots = _plots(data)
    for name, png in plots.items():
        write_bytes_atomic(out / name, png)
    write_text_atomic(out / "study.csv", csv_text(data["rows"], ROW_KEYS))
    points = data["points"]
    write_text_atomic(out / "points.csv", csv_text(points, list(points[0]) if points else []))
    page = _page(data, plots)
    write_text_atomic(out / "report.md", to_markdown(page))
    write_text_atomic(out / "report.html", to_html(page))
    write_text_atomic(out / "study.json", text)
    if json_file:
        write_text_atomic(Path(json_file), text)


# --- reading the data ----------------------------------------------------------------

def _label(x: dict) -> str:
    return f"{x['workload']} {x['model']}"


def _mine(items: list[dict], entry: dict) -> list[dict]:
    return [x for x in items if (x["workload"], x["model"]) == (entry["workload"],
                                                                 entry["model"])]


def _networks(data: dict) -> list[str]:
    """The steady network first, then the fast variants, in the data's order."""
    return [n["network"] for n in data["networks"]]


def _series(points: list[dict], network: str) -> list[dict]:
    return sorted((p for p in points if p["network"] == network),
                  key=lambda p: p["world_size"])


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"
    return escape(str(v))


def _fmt_none(v: Any) -> str:
    """The study table's cells: no crossover (or no useful N) is the word "none"."""
    return "none" if v is None else _fmt(v)


def _pct(x: float) -> str:
    return f"{x:+.0f}%" if abs(x) >= 10 else f"{x:+.2g}%"


def _gap(data: dict, e: dict) -> str:
    """How far each fast variant's mean step is from the steady one's at the largest N,
    in percent: the size of what the crossover decides."""
    top = max(e["world_sizes"])
    at = {p["network"]: p["mean_us"] for p in _mine(data["points"], e)
          if p["world_size"] == top}
    if "steady" not in at:
        return ""
    parts = [f"{_pct(100 * (at[n] / at['steady'] - 1))} ({n})" for n in _networks(data)[1:]
             if n in at]
    return f"at N = {top} the fast mean step is " + ", ".join(parts) + " of the steady one's"


def _metric(rows: list[dict], key: str, top: int) -> str:
    """One metric's crossovers, variants with the same N grouped: "from N = 512
    (lognormal), 64 (pareto, spikes); no crossover up to N = 1024 (x)"."""
    groups: dict[int | None, list[str]] = {}
    for r in rows:
        groups.setdefault(r[key], []).append(r["variant"])
    found = sorted(c for c in groups if c is not None)
    wins = ", ".join(f"{'N = ' if i == 0 else ''}{c} ({', '.join(groups[c])})"
                     for i, c in enumerate(found))
    parts = [f"the steady network is no slower from {wins}"] if found else []
    if None in groups:
        parts.append(f"no crossover up to N = {top} ({', '.join(groups[None])})")
    return "; ".join(parts)


def _headline(data: dict, e: dict) -> str:
    """One workload's verdict in a sentence or two, for the summary."""
    top = max(e["world_sizes"])
    rows = _mine(data["rows"], e)
    gap = _gap(data, e)
    return (f"{_label(e)}: on the p99 step {_metric(rows, 'crossover_n_p99', top)}; on "
            f"the mean step {_metric(rows, 'crossover_n', top)}."
            + (f" {gap[0].upper()}{gap[1:]}." if gap else ""))


# --- plots ---------------------------------------------------------------------------

def _plots(data: dict[str, Any]) -> dict[str, bytes]:
    palette = Palette(_networks(data))
    out: dict[str, bytes] = {}
    with style():
        for e in data["entries"]:
            out[_step_name(e)] = _step_plot(data, e, palette)
            out[_eff_name(e)] = _eff_plot(data, e, palette)
            if _mine(data["sensitivity"], e):
                out[_sens_name(e)] = _sens_plot(data, e, palette)
    return out


def _slug(e: dict) -> str:
    return slug(f"{e['workload']}_{e['model']}")


def _step_name(e: dict) -> str:
    return f"step_time_{_slug(e)}.png"


def _eff_name(e: dict) -> str:
    return f"efficiency_{_slug(e)}.png"


def _sens_name(e: dict) -> str:
    return f"sensitivity_{_slug(e)}.png"


def _legend(ax, palette: Palette, names: list[str], styles: tuple[str, str]) -> None:
    """A legend under the axes: a colour per network, then what solid and dashed mean."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=palette.colour(n), label=n) for n in names]
    handles += [Line2D([], [], color="#333333", ls=ls, label=text)
                for ls, text in zip(("-", "--"), styles)]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3,
              frameon=False)


def _step_plot(data: dict, e: dict, palette: Palette) -> bytes:
    fig, ax = figure(3.6)
    points = _mine(data["points"], e)
    names = _networks(data)
    ys = []
    for name in names:
        s = _series(points, name)
        n = [p["world_size"] for p in s]
        for key, ls in (("mean_us", "-"), ("p99_us", "--")):
            y = [p[key] / 1e3 for p in s]
            ys += y
            ax.plot(n, y, ls=ls, color=palette.colour(name), lw=1.4 if ls == "-" else 1.1)
    _mark_crossovers(ax, _mine(data["rows"], e), points, palette)
    if ys and min(ys) > 0 and max(ys) / min(ys) > 10:
        _log_y(ax)
    n_axis(ax, e["world_sizes"])
    ax.set_ylabel("step time (ms)")
    ax.set_title(_label(e))
    _legend(ax, palette, names, ("mean", "p99"))
    return save(fig)


def _log_y(ax) -> None:
    """A log y axis with plain numbers (2, 5, 10, 20 ms), not powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: ""))


def _mark_crossovers(ax, rows: list[dict], points: list[dict], palette: Palette) -> None:
    """The mean crossover as a dotted vertical line, the p99 one as a ring on the fast
    p99 line, each in its variant's colour; labels staggered so they do not overlap."""
    for i, r in enumerate(rows):
        colour = palette.colour(r["variant"])
        if r["crossover_n"] is not None:
            ax.axvline(r["crossover_n"], color=colour, ls=":", lw=1.3)
            ax.annotate(f"{r['variant']} (mean)", (r["crossover_n"], 0.97 - 0.08 * i),
                        xycoords=("data", "axes fraction"), ha="left", va="top",
                        fontsize=8, color=colour, xytext=(3, 0),
                        textcoords="offset points")
        c = r["crossover_n_p99"]
        at = [p for p in points if p["network"] == r["variant"] and p["world_size"] == c]
        if at:
            ax.plot([c], [at[0]["p99_us"] / 1e3], marker="o", ms=8, mfc="none",
                    mec=colour, mew=1.5, ls="none")


def _eff_plot(data: dict, e: dict, palette: Palette) -> bytes:
    fig, ax = figure(3.2)
    points = _mine(data["points"], e)
    names = _networks(data)
    for name in names:
        s = _series(points, name)
        n = [p["world_size"] for p in s]
        ax.plot(n, [p["efficiency"] for p in s], color=palette.colour(name), lw=1.4)
        ax.plot(n, [p["efficiency_p99"] for p in s], ls="--", color=palette.colour(name),
                lw=1.1)
    ax.axhline(data["threshold"], color="grey", lw=0.8, ls=":")
    top = max([1.0, *(p["efficiency_p99"] for p in points)])
    ax.set_ylim(0, top + 0.05)
    n_axis(ax, e["world_sizes"])
    ax.set_ylabel("efficiency E(N)")
    ax.set_title(_label(e))
    _legend(ax, palette, names, ("mean step", "p99 step"))
    return save(fig)


def _sens_plot(data: dict, e: dict, palette: Palette) -> bytes:
    """Fast over steady mean step against the per-hop p99/p50, a line per N, each
    break-even ratio a cross on the line at 1."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    fig, ax = figure(3.2)
    ratios: set[float] = set()
    for i, s in enumerate(sorted(_mine(data["sensitivity"], e),
                                 key=lambda s: s["world_size"])):
        colour = N_SHADES[i % len(N_SHADES)]
        ratio = [f / s["steady_mean_us"] for f in s["fast_mean_us"]]
        ax.plot(s["ratios"], ratio, marker=N_MARKERS[i % len(N_MARKERS)], color=colour,
                label=f"N = {s['world_size']}")
        ratios.update(s["ratios"])
        if s["break_even_ratio"]["value"] is not None:
            ax.plot([s["break_even_ratio"]["value"]], [1.0], marker="x", ms=9, mew=2,
                    color=colour, ls="none")
    ax.axhline(1.0, color="black", lw=0.9)
    ax.set_xscale("log")
    for net in data["networks"][1:]:
        x = net["inter"]["latency_p99_p50"]
        ax.axvline(x, color=palette.colour(net["network"]), ls=":", lw=1.1)
        ax.annotate(net["network"], (x, 0.98), xycoords=("data", "axes fraction"),
                    rotation=90, ha="right", va="top", fontsize=8,
                    color=palette.colour(net["network"]))
    ax.xaxis.set_major_locator(FixedLocator(sorted(ratios)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.3g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("per-hop latency p99/p50 of the fast network (log)")
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_ylabel("fast / steady mean step")
    ax.set_title(_label(e))
    ax.legend(loc="upper left", framealpha=0.85, title="above 1: steady wins",
              title_fontsize=8)
    return save(fig)


# --- the page ------------------------------------------------------------------------

def _page(data: dict[str, Any], plots: dict[str, bytes]) -> Page:
    sections = (_networks_section(data), _verdict_section(data),
                *(_entry_section(data, e, plots) for e in data["entries"]),
                _sensitivity_section(data, plots), _check_section(data))
    return Page(f"jitterlab study: {escape(data['name'])}", _meta(data),
                Summary(_facts(data), _headlines(data)), sections)


def _meta(data: dict) -> str:
    return (f"{len(data['entries'])} workload and model pairs, each simulated on the steady "
            f"network and on {len(data['networks']) - 1} variants of the fast one; "
            f"{data['steps']} simulated steps per point, seed {data['seed']}.")


def _facts(data: dict) -> tuple[tuple[str, str], ...]:
    steady, *fast = data["networks"]
    fast_bw = fast[0]["inter"]["bandwidth_gbps"] if fast else float("nan")
    return (("question", "does a network with predictable latency beat one with twice the "
                         "bandwidth but jittery latency (the same mean), and from which "
                         "world size N?"),
            ("steady network", f"{_fmt(steady['inter']['bandwidth_gbps'])} GB/s between "
                               f"nodes, {steady['inter']['latency']}"),
            ("fast network", f"{_fmt(fast_bw)} GB/s between nodes, jitter variants: "
                             + "; ".join(f"{n['network']}: {n['inter']['latency']}"
                                         for n in fast)),
            ("steps per point", str(data["steps"])),
            ("efficiency threshold", f"useful N: E(N) >= {_fmt(data['threshold'])}"))


def _headlines(data: dict) -> tuple[str, ...]:
    out = [_headline(data, e) for e in data["entries"]]
    out.append("The verdict table has every row with its sentence; one section per "
               "workload shows the step time against N; the sensitivity section shows how "
               "much jitter the 2x bandwidth carries; the last checks the approximation. A "
               "crossover at N = 2 means the steady network is never slower at any N "
               "studied; up to one node (8 GPUs) the two networks are the same, so a tie "
               "there counts as no slower.")
    return tuple(out)


def _networks_section(data: dict) -> Section:
    cols = ("tier", Column("bandwidth_gbps", "bandwidth (GB/s)"), Column("latency",
            "per-hop latency law"), Column("latency_mean_us", "mean per hop (µs)"),
            Column("latency_p99_p50", "per-hop p99/p50"))
    steady, *fast = data["networks"]
    fast_rows = [{"tier": "intra (inside a node)", **fast[0]["intra"]}] if fast else []
    fast_rows += [{"tier": f"inter, variant {n['network']}", **n["inter"]} for n in fast]
    tables = (Table.of("steady network", [{"tier": f"{t} ({where})", **steady[t]}
                                          for t, where in TIERS], cols, _fmt),
              Table.of("fast network: one inter-node law per variant", fast_rows, cols, _fmt))
    return Section("The two networks", (
        "A message of b bytes on a tier takes a per-hop latency drawn from the tier's law "
        "plus b / bandwidth. The fast network has the steady one's mean latency; only its "
        "spread differs."), (
        *tables,
        Note("Intra-node links are the same in both networks; only the inter-node tier "
             "differs. The networks share their random draws (a paired comparison): every "
             "message gets the same standard draws on every network, so a difference "
             "between them is the laws', not the luck of the draw."),
        Paragraph("Every assumption of the study, with where it comes from:",
                  lead="Sources."),
        Definitions(tuple(data["sources"].items()))))


def _verdict_section(data: dict) -> Section:
    cols = ("workload", "model", "variant", Column("crossover_n", "crossover N (mean)"),
            Column("crossover_n_p99", "crossover N (p99)"),
            Column("useful_n_steady", "useful N, steady"),
            Column("useful_n_fast", "useful N, fast"))
    return Section("The verdict", (
        "Per workload and fast variant: from which N the steady network's step is no "
        "longer than the fast one's, and the useful parallelism on each network. \"none\" "
        "is written out: no crossover in the N studied."), (
        Table.of(STUDY_TABLE, data["rows"], cols, _fmt_none),
        Definitions((
            ("crossover N", "the smallest N >= 2 from which the steady network's step "
                            "(mean, or p99) is no longer than the fast network's at that N "
                            "and at every larger N studied; none: there is no such N"),
            ("efficiency", "E(N) = T_compute(N) / T(N): the share of the step that is the "
                           "ranks' own compute at perfect balance (a free, jitter-free "
                           "network and even expert loads); for data parallelism T(1) / T(N)"),
            ("useful N", f"the largest N studied with E(N) >= {_fmt(data['threshold'])} "
                         "(mean step); none: no N reaches it"))),
        Paragraph("", lead="Every row in words."),
        Bullets(tuple(f"{_label(r)}, {r['variant']}: {r['verdict']}." for r in data["rows"]))))


def _step_caption(data: dict, e: dict) -> str:
    top = max(e["world_sizes"])
    rows = _mine(data["rows"], e)
    gap = _gap(data, e)
    return ("Read where a variant's lines cross the steady ones (a dotted vertical in the "
            "variant's colour marks its mean crossover, a ring on its dashed line the p99 "
            "one) and whether the steady line then stays below. On the mean step "
            f"{_metric(rows, 'crossover_n', top)}; on the p99 step "
            f"{_metric(rows, 'crossover_n_p99', top)}." + (f" The gap: {gap}." if gap else ""))


def _entry_section(data: dict, e: dict, plots: dict[str, bytes]) -> Section:
    points = _mine(data["points"], e)
    lo, hi = min(e["world_sizes"]), max(e["world_sizes"])
    steady = _series(points, "steady")
    compute = (f" Compute per step at perfect balance: {_fmt(steady[0]['compute_us'])} µs "
               f"at N = {steady[0]['world_size']}, {_fmt(steady[-1]['compute_us'])} µs at "
               f"N = {steady[-1]['world_size']}." if steady else "")
    intro = (f"{e['describe']}; {e['dtype']}, batch {e['batch']}; collectives as "
             f"{e['algorithm']}; N from {lo} to {hi}." + compute)
    order = {n: i for i, n in enumerate(_networks(data))}
    raw = sorted(points, key=lambda p: (p["world_size"], order.get(p["network"], 99)))
    figs: list = []
    if _step_name(e) in plots:
        figs.append(Figure(_step_name(e), plots[_step_name(e)],
                             f"Step time (ms) of {_label(e)} against N on a log2 axis, mean "
                             "solid and p99 dashed, one colour per network, with each "
                             "variant's crossover marked.", _step_caption(data, e)))
    if _eff_name(e) in plots:
        figs.append(Figure(_eff_name(e), plots[_eff_name(e)],
                             f"Efficiency E(N) of {_label(e)} against N, mean step solid and "
                             "p99 step dashed, one colour per network, the threshold dotted.",
                             "Read where each solid line falls below the dotted threshold: "
                             "the last N above it is that network's useful N."))
    blocks: list = [Gallery(tuple(figs), "One colour per network, the same in every plot "
                            "of this page; N on a log2 axis.")] if figs else []
    blocks.append(Table.of(f"{_label(e)}: every point (raw)", raw, (
        "network", Column("world_size", "N"), "mean_us", "p99_us", "compute_us",
        "efficiency", "efficiency_p99"), _fmt, collapsible=True))
    return Section(_label(e), intro, tuple(blocks))


def _break_even_cell(s: dict) -> str:
    b = s["break_even_ratio"]
    if b["value"] is not None:
        return f"{b['value']:.3g}"
    edge = s["ratios"][0] if b["bound"] == "below" else s["ratios"][-1]
    return f"{b['bound']} {edge:g}"


def _sensitivity_section(data: dict, plots: dict[str, bytes]) -> Section:
    rows = [{"workload": s["workload"], "model": s["model"], "N": s["world_size"],
             "break_even": _break_even_cell(s),
             "text": s["break_even_ratio"]["text"]} for s in data["sensitivity"]]
    figs = tuple(Figure(_sens_name(e), plots[_sens_name(e)],
                        f"Fast over steady mean step of {_label(e)} against the fast "
                        "network's per-hop p99/p50 (log axis), one line per N, a line at 1.",
                        _label(e)) for e in data["entries"] if _sens_name(e) in plots)
    blocks: list = [Table.of("Break-even per-hop p99/p50", rows, (
        "workload", "model", "N", Column("break_even", "break-even p99/p50"),
        Column("text", "in words")), _fmt)]
    if figs:
        blocks.append(Gallery(figs, (
            "Each panel: the fast network's mean step over the steady one's, as the fast "
            "network's per-hop latency (a lognormal of the same mean) gets more jittery, at "
            "up to three N. Below the black line at 1 the 2x bandwidth wins; where a line "
            "crosses it (a cross) is the break-even jitter; above it the steady network "
            "wins. The dotted verticals are the p99/p50 of each fast variant's own law, in "
            "its colour (the pareto and spike variants are not lognormal, so only their "
            "p99/p50 matches).")))
    return Section(SENSITIVITY, (
        "For each workload, at N spread over the range it allows: the largest per-hop "
        "p99/p50 of the fast network's latency at which its 2x bandwidth still gives the "
        "shorter mean step. \"below x\": the steady network wins even at the smallest ratio "
        "tried; \"above x\": the fast one wins even at the largest."), tuple(blocks))


def _pct_cell(x: float | None) -> float | str:
    """A relative error in percent to two decimals (no -0.00); "n/a" where none."""
    return "n/a" if x is None else round(100 * x, 2) + 0.0


def _check_section(data: dict) -> Section:
    rows = [c | {"mean_error_pct": _pct_cell(c["mean_error"]),
                 "p99_error_pct": _pct_cell(c["p99_error"]),
                 "worst_ratio_error_pct": _pct_cell(c.get("worst_ratio_error"))}
            for c in data["checks"]]
    return Section("Approximation check", (
        "The approximation: each collective starts when its slowest rank is ready (a barrier "
        "before every collective, so no skew carries from one collective to the next) and "
        "takes a duration drawn from a pool of simulated calls of that collective. The "
        "reference carries every rank's clock through every site with fresh draws per call; "
        "it is affordable only at small N, where the two are compared here (the table: "
        "the first fast variant; worst error of the steady/fast ratio over every variant "
        "in the last column). The barrier can only delay a rank, so the approximation is "
        "an upper bound on every step, and a larger one for the jittery networks: it "
        "leans toward the steady network, by the ratio error shown."), (
        Table.of("Approximation against the rank-by-rank reference", rows, (
            "workload", "model", Column("world_size", "N"), "variant",
            Column("approx_mean_us", "approx. mean (µs)"),
            Column("full_mean_us", "reference mean (µs)"),
            Column("mean_error_pct", "mean error (%)"),
            Column("approx_p99_us", "approx. p99 (µs)"),
            Column("full_p99_us", "reference p99 (µs)"),
            Column("p99_error_pct", "p99 error (%)"),
            Column("full_steps", "reference steps"),
            Column("worst_ratio_error_pct", "worst steady/fast ratio error (%)")), _fmt),
        Note("The reference runs few steps (the reference steps column), so its p99 is "
             "close to the largest of them and noisy itself: read the mean error first.")))
