"""The report's plots: one function each, PNG bytes by file name. Every plot of a page
takes its schedule colours from one ``page.Palette`` and draws N on a log2 axis
(``n_axis``); the simulator report uses the same helpers."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from .page import Palette

SITE_MAX_PLOT = "predicted_vs_measured.png"
BREAKDOWN_PLOT = "time_breakdown.png"
PARTS = (("compute_us", "compute", "#4c72b0"), ("delay_us", "injected delay", "#dd8452"),
         ("skew_wait_us", "wait for the slowest", "#c44e52"),
         ("collective_us", "collective", "#8c8c8c"))
MARKERS = "osD^v<>"  # one per batch: a schedule keeps its colour, a batch its marker
MAX_N_TICKS = 11

# per plot: the alternative text (what it shows) and the caption (what to read from it)
CAPTIONS = {
    "latency_vs_n.png": (
        "Step latency (ms) against world size N, one line per schedule: p99 solid, mean "
        "dashed, N on a log2 axis.",
        "Read the slope: a line that stays flat does not grow with N; p99 (solid) rising "
        "faster than the mean (dashed) is the max of N draws amplifying the jitter's tail. "
        "One colour per schedule in every plot of this page."),
    "step_latency_cdf.png": (
        "Cumulative distribution of step latency (ms) at each schedule's largest N.",
        "Read the right end: how far the slowest steps sit beyond the body of the "
        "distribution. A long flat run just below 1.0 is a few very slow steps, where the "
        "p99 comes from."),
    "efficiency_vs_n.png": (
        "Efficiency E(N) of the mean step against world size N, one line per schedule, "
        "with a dotted line at 0.5.",
        "Read where each line crosses the dotted 0.5: the largest N above it is the "
        "schedule's useful parallelism. The gap to the no-jitter line is what the jitter "
        "costs at that N."),
    "model_efficiency_vs_n.png": (
        "Efficiency E(N) of the mean step from the simulator (lines, to large N) and "
        "measured (dots), N on a log2 axis, the measured span shaded.",
        "Read the dots against their line inside the shaded span: filled dots are the "
        "points the model was fitted on, hollow ones validate it out of sample. Beyond the "
        "span only the model speaks."),
    BREAKDOWN_PLOT: (
        "Horizontal stacked bars, one per point: the mean step split into compute, "
        "injected delay, wait for the slowest rank and the collective's own time (ms).",
        "Read the red and orange parts: the injected delay and the wait it causes on the "
        "other ranks. Their growth from N = 1 to the largest N of a schedule is the jitter's "
        "cost; compute shrinking with N is the parallelism that pays for it."),
    SITE_MAX_PLOT: (
        "Scatter of achieved against predicted injected delay per site (µs), one dot per "
        "point, with the line y = x.", ""),
}


def style():
    """The plots' text sizes (a context): large enough to read when a phone shrinks a
    plot to 0.6 of its size."""
    import matplotlib

    matplotlib.use("Agg")
    return matplotlib.rc_context({"font.size": 11, "legend.fontsize": 9,
                                  "axes.titlesize": 11})


def plots(data: dict[str, Any]) -> dict[str, bytes]:
    """Every plot of the report's data (``report.build``), by file name."""
    with style():
        return _plots(data)


def _plots(data: dict[str, Any]) -> dict[str, bytes]:
    names = [s.name for s in data["spec"].schedules]
    palette = Palette(names)
    batches = list(data["spec"].batches)

    def ordered(rows: list[dict]) -> list[dict]:  # legends in the spec's order
        return sorted(rows, key=lambda r: (names.index(r["schedule"]) if r["schedule"] in
                                           names else len(names), r["batch"], r["world_size"]))

    by_batch = len(batches) > 1

    def label(key: tuple[str, int]) -> str:
        return f"{key[0]} (batch {key[1]})" if by_batch else key[0]

    def style(key: tuple[str, int]) -> dict[str, Any]:
        i = batches.index(key[1]) if key[1] in batches else 0
        return {"color": palette.colour(key[0]), "marker": MARKERS[i % len(MARKERS)],
                "label": label(key)}

    rows = ordered(data["scaling"])
    out = {"latency_vs_n.png": _latency(rows, style),
           "efficiency_vs_n.png": _efficiency(rows, style),
           "step_latency_cdf.png": _cdf(data["largest"], palette)}
    out[BREAKDOWN_PLOT] = _breakdown(ordered(data["points"]), label)
    out.update(_heatmaps(data["largest"]))
    out["model_efficiency_vs_n.png"] = _model(data, rows, style)
    out[SITE_MAX_PLOT] = _site_max(ordered(data["points"]), palette)
    return out


def figure(height: float = 3.4):
    """A new (figure, axes) of the report's width: 5.2 inches at 120 dpi (624 px), which
    a phone shrinks by about 0.6 (``style`` sets text sizes for that)."""
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(5.2, height))


def n_axis(ax, ns: Sequence[int], measured: Sequence[int] = (),
           label: str = "world size N (ranks)") -> None:
    """N on a log2 axis with a tick at each N of the data (thinned past MAX_N_TICKS);
    ``measured``: the measured N, shaded from the smallest to the largest and labelled,
    so the reader sees where the model speaks alone."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_xlabel(label)
    ticks = sorted({int(n) for n in ns if n and n > 0})
    if not ticks:  # a log axis needs data: a sweep may have no point at all
        return
    ax.set_xscale("log", base=2)
    keep = np.unique(np.linspace(0, len(ticks) - 1, min(len(ticks), MAX_N_TICKS)).round())
    ax.xaxis.set_major_locator(FixedLocator([ticks[int(i)] for i in keep]))  # both ends
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(_n_label))
    if measured:
        lo, hi = min(measured), max(measured)
        ax.axvspan(lo / 1.15, hi * 1.15, color="#000000", alpha=0.07, lw=0)
        ax.annotate("measured", ((lo * hi) ** 0.5, 0.98), xycoords=("data", "axes fraction"),
                    ha="center", va="top", fontsize=8, color="#444444")


def _n_label(n: float, _pos: int) -> str:
    n = int(round(n))
    return str(n) if n < 1000 else f"$2^{{{n.bit_length() - 1}}}$"


def save(fig) -> bytes:
    """The figure as PNG bytes (and closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _series(rows: list[dict]) -> list[tuple[str, int]]:
    seen: dict[tuple[str, int], None] = {}
    for r in rows:
        seen.setdefault((r["schedule"], r["batch"]), None)
    return list(seen)


def _of(rows: list[dict], key: tuple[str, int], col: str) -> list[dict]:
    """One series' rows that have ``col``, by N."""
    return sorted((r for r in rows if (r["schedule"], r["batch"]) == key
                   and r.get(col) is not None), key=lambda r: r["world_size"])


def _latency(rows: list[dict], style) -> bytes:
    fig, ax = figure()
    for key in _series(rows):
        mine = _of(rows, key, "p99_s")
        n = [r["world_size"] for r in mine]
        ax.plot(n, [r["p99_s"] * 1e3 for r in mine], **style(key))
        ax.plot(n, [r["mean_s"] * 1e3 for r in mine], ls="--", alpha=0.6,
                color=style(key)["color"])
    n_axis(ax, [r["world_size"] for r in rows])
    ax.set_ylabel("step latency (ms); solid p99, dashed mean")
    _legend(ax)
    return save(fig)


def _efficiency(rows: list[dict], style) -> bytes:
    fig, ax = figure()
    for key in _series(rows):
        mine = _of(rows, key, "efficiency_mean")
        if mine:
            ax.plot([r["world_size"] for r in mine], [r["efficiency_mean"] for r in mine],
                    **style(key))
    n_axis(ax, [r["world_size"] for r in rows])
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_ylabel("efficiency E(N) = S(N)/N (mean)")
    _legend(ax)
    return save(fig)


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", framealpha=0.85)


def _cdf(largest: dict[str, dict], palette: Palette) -> bytes:
    fig, ax = figure()
    for name, big in largest.items():
        x = np.sort(big["steps_s"]) * 1e3
        ax.step(x, np.arange(1, x.size + 1) / x.size, where="post",
                color=palette.colour(big["schedule"]),
                label=f"{name} (N={big['world_size']})")
    ax.set_xlabel("step latency (ms)")
    ax.set_ylabel("fraction of steps")
    _legend(ax)
    return save(fig)


def _breakdown(points: list[dict], label) -> bytes:
    """Per point, the mean step's parts stacked (ms), the first point on top."""
    fig, ax = figure(1.2 + 0.28 * len(points))
    names = [f"{label((p['schedule'], p['batch']))}, N={p['world_size']}" for p in points]
    left = np.zeros(len(points))
    for key, text, colour in PARTS:
        width = np.array([(p.get(key) or 0.0) / 1e3 for p in points])
        ax.barh(names, width, left=left, color=colour, label=text)
        left += width
    ax.invert_yaxis()
    ax.set_xlabel("time per step (ms), mean")
    _legend(ax)
    return save(fig)


def _heatmaps(largest: dict[str, dict]) -> dict[str, bytes]:
    out = {}
    for name, big in largest.items():
        fig, ax = figure(1.8 + 0.15 * len(big["wait_us"]))
        im = ax.imshow(np.array(big["wait_us"]), aspect="auto", cmap="viridis")
        ax.set_xlabel("site (collective index in the step)")
        ax.set_ylabel("rank")
        ax.set_yticks(range(len(big["wait_us"])))
        ax.set_title(f"{name}, N={big['world_size']}: mean wait in the collective (µs)")
        fig.colorbar(im, ax=ax)
        out[heatmap_name(name)] = save(fig)
    return out


HEATMAP_CAPTION = ("Mean wait in the collective (µs) per rank (rows) and site (columns) at "
                   "each schedule's largest N. Read the rows: the rank that arrives last "
                   "waits least (a dark row); bright rows are the ranks that wait for it. A "
                   "dark row across every site is a straggler rank.")


def heatmap_caption(label: str, big: dict) -> tuple[str, str]:
    """One wait heatmap's alternative text and short caption (``HEATMAP_CAPTION`` says
    how to read them all)."""
    return (f"Heatmap of the mean wait in the collective (µs) per rank and site for {label} "
            f"at N = {big['world_size']}.", f"{label}, N = {big['world_size']}")


def heatmap_name(label: str) -> str:
    """The wait heatmap's file name of one schedule (and batch) label."""
    return f"wait_heatmap_{slug(label)}.png"


def _model(data: dict[str, Any], scaled: list[dict], style) -> bytes:
    """The simulator's efficiency per schedule (line, band where the model has one) over
    the measured efficiency (filled: the points it was fitted on; hollow: validation)."""
    fig, ax = figure()
    for batch, model in data["models"].items():
        fitted = set((model.get("fit") or {}).get("schedules", ()))
        ext = [r | {"batch": batch} for r in model["extrapolation"]]
        for key in _series(ext + [r for r in scaled if r["batch"] == batch]):
            mine = _of(ext, key, "efficiency")
            xs = [r["world_size"] for r in mine]
            ax.plot(xs, [r["efficiency"] for r in mine], color=style(key)["color"],
                    label=style(key)["label"])
            if mine and all("efficiency_lo" in r for r in mine):
                ax.fill_between(xs, [r["efficiency_lo"] for r in mine],
                                [r["efficiency_hi"] for r in mine],
                                color=style(key)["color"], alpha=0.15, lw=0)
            got = _of([r for r in scaled if r["batch"] == batch], key,
                      "efficiency_mean")
            s = style(key)
            ax.plot([r["world_size"] for r in got], [r["efficiency_mean"] for r in got],
                    ls="none", marker=s["marker"], color=s["color"],
                    mfc=s["color"] if key[0] in fitted else "white")
    ns = [r["world_size"] for m in data["models"].values() for r in m["extrapolation"]]
    measured = [q["world_size"] for q in data["points"]]
    n_axis(ax, ns + measured, measured,
           label="world size N (ranks); the model beyond the measured span")
    ax.set_ylabel("efficiency E(N) of the mean step")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    _legend(ax)
    return save(fig)


def _site_max(points: list[dict], palette: Palette) -> bytes:
    fig, ax = figure()
    pts = site_max_points(points)
    for p in pts:
        ax.scatter(p["site_max_predicted_us"], p["site_max_achieved_us"],
                   color=palette.colour(p["schedule"]))
    xs, ys = site_max_pairs(points)
    lim = max([1.0, *xs, *ys])
    ax.plot([0, lim], [0, lim], color="grey", lw=0.8)
    ax.set_xlabel("predicted E[max over ranks] of a site's delay (µs)")
    ax.set_ylabel("achieved: mean site max of delay_ns (µs)")
    for name in dict.fromkeys(p["schedule"] for p in pts):
        ax.scatter([], [], color=palette.colour(name), label=name)
    _legend(ax)
    return save(fig)


def site_max_points(points: list[dict]) -> list[dict]:
    """The points that have both a predicted and an achieved site max."""
    return [p for p in points if p["site_max_predicted_us"] is not None
            and p.get("site_max_achieved_us") is not None]


def site_max_pairs(points: list[dict]) -> tuple[list[float], list[float]]:
    """(predicted, achieved) site max, µs, of the points that have both: the achieved
    delay (``delay_ns``, what the injector did), not the requested one, which is the
    schedule's own draw and agrees with its prediction by construction."""
    pts = site_max_points(points)
    return ([p["site_max_predicted_us"] for p in pts],
            [p["site_max_achieved_us"] for p in pts])


def site_max_caption(points: list[dict]) -> str:
    missing = sum(p.get("site_max_achieved_us") is None for p in points)
    return ("Achieved vs predicted injected delay per site: x, the order-statistics "
            "prediction E[max over ranks] of the schedule's delay at one site (µs); y, the "
            "measured mean over (step, site) of the max over ranks of the achieved delay "
            "delay_ns (µs); one dot per point, the grey line is y = x. Above it the "
            "injector delays more than asked (its lateness)."
            + (f" {missing} point(s) without an achieved value (an older summary) are "
               "n/a here." if missing else ""))


def slug(name: str) -> str:
    """A file-name-safe form; a short hash keeps names that differ only in punctuation
    ("a b/c", "a b_c") apart."""
    import hashlib

    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:48]
    return safe if safe == name else f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"
