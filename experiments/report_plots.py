"""The report's plots: one function each, PNG bytes by file name."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

SITE_MAX_PLOT = "predicted_vs_measured.png"


def plots(data: dict[str, Any]) -> dict[str, bytes]:
    """Every plot of the report's data (``report.build``), by file name."""
    import matplotlib

    matplotlib.use("Agg")
    by_batch = len(data["spec"].batches) > 1

    def label(key: tuple[str, int]) -> str:
        return f"{key[0]} (batch {key[1]})" if by_batch else key[0]

    out = {"latency_vs_n.png": _latency(data["scaling"], label),
           "efficiency_vs_n.png": _efficiency(data["scaling"], label),
           "step_latency_cdf.png": _cdf(data["largest"])}
    out.update(_heatmaps(data["largest"]))
    out["model_efficiency_vs_n.png"] = _model(data, label)
    out[SITE_MAX_PLOT] = _site_max(data["points"])
    return out


def _figure(height: float = 4):
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6, height))


def _log2_x(ax) -> None:  # a log axis needs data: a sweep may have no N = 1 point
    if any(len(line.get_xdata()) for line in ax.get_lines()):
        ax.set_xscale("log", base=2)


def _save(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _series(rows: list[dict]) -> list[tuple[str, int]]:
    return sorted({(r["schedule"], r["batch"]) for r in rows})


def _latency(rows: list[dict], label) -> bytes:
    fig, ax = _figure()
    for key in _series(rows):
        mine = sorted((r for r in rows if (r["schedule"], r["batch"]) == key),
                      key=lambda r: r["world_size"])
        n = [r["world_size"] for r in mine]
        (line,) = ax.plot(n, [r["p99_s"] * 1e3 for r in mine], marker="o", label=label(key))
        ax.plot(n, [r["mean_s"] * 1e3 for r in mine], ls="--", alpha=0.6,
                color=line.get_color())
    _log2_x(ax)
    ax.set_xlabel("world size N (ranks)")
    ax.set_ylabel("step latency (ms); solid p99, dashed mean")
    ax.legend(fontsize=7)
    return _save(fig)


def _efficiency(rows: list[dict], label) -> bytes:
    fig, ax = _figure()
    for key in _series(rows):
        mine = sorted((r for r in rows if (r["schedule"], r["batch"]) == key
                       and r["efficiency_mean"] is not None), key=lambda r: r["world_size"])
        if mine:
            ax.plot([r["world_size"] for r in mine], [r["efficiency_mean"] for r in mine],
                    marker="o", label=label(key))
    _log2_x(ax)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("world size N (ranks)")
    ax.set_ylabel("efficiency E(N) = S(N)/N (mean)")
    ax.legend(fontsize=7)
    return _save(fig)


def _cdf(largest: dict[str, dict]) -> bytes:
    fig, ax = _figure()
    for name, big in sorted(largest.items()):
        x = np.sort(big["steps_s"]) * 1e3
        ax.step(x, np.arange(1, x.size + 1) / x.size, where="post",
                label=f"{name} (N={big['world_size']})")
    ax.set_xlabel("step latency (ms)")
    ax.set_ylabel("fraction of steps")
    ax.legend(fontsize=7)
    return _save(fig)


def _heatmaps(largest: dict[str, dict]) -> dict[str, bytes]:
    out = {}
    for name, big in sorted(largest.items()):
        fig, ax = _figure(2 + 0.15 * len(big["wait_us"]))
        im = ax.imshow(np.array(big["wait_us"]), aspect="auto", cmap="viridis")
        ax.set_xlabel("site (collective index in the step)")
        ax.set_ylabel("rank")
        ax.set_yticks(range(len(big["wait_us"])))
        ax.set_title(f"{name}, N={big['world_size']}: mean wait in the all-reduce (µs)")
        fig.colorbar(im, ax=ax)
        out[f"wait_heatmap_{slug(name)}.png"] = _save(fig)
    return out


def _model(data: dict[str, Any], label) -> bytes:
    fig, ax = _figure()
    for batch, model in data["models"].items():
        for name in sorted({r["schedule"] for r in model["extrapolation"]}):
            mine = [r for r in model["extrapolation"] if r["schedule"] == name
                    and r["efficiency"] is not None]
            if mine:
                xs = [r["world_size"] for r in mine]
                line, = ax.plot(xs, [r["efficiency"] for r in mine],
                                label=label((name, batch)))
                if all("efficiency_lo" in r for r in mine):
                    ax.fill_between(xs, [r["efficiency_lo"] for r in mine],
                                    [r["efficiency_hi"] for r in mine],
                                    color=line.get_color(), alpha=0.15, lw=0)
    _log2_x(ax)
    measured = [q["world_size"] for q in data["points"]]
    if measured:
        ax.axvline(max(measured), color="grey", lw=0.8, ls="--")
        ax.annotate(" largest measured N", (max(measured), 0.98), fontsize=7,
                    xycoords=("data", "axes fraction"), va="top")
    ax.set_xlabel("world size N (ranks), model beyond the measured points")
    ax.set_ylabel("efficiency E(N) of the mean step (simulator)")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.legend(fontsize=7)
    return _save(fig)


def _site_max(points: list[dict]) -> bytes:
    fig, ax = _figure()
    xs, ys = site_max_pairs(points)
    ax.scatter(xs, ys)
    lim = max([1.0, *xs, *ys])
    ax.plot([0, lim], [0, lim], color="grey", lw=0.8)
    ax.set_xlabel("predicted E[max over ranks] of a site's injected delay (µs), "
                  "order statistics")
    ax.set_ylabel("achieved: mean over sites of max over ranks of delay_ns (µs)")
    ax.set_title("injected delay at a site: achieved vs predicted", fontsize=9)
    return _save(fig)


def site_max_pairs(points: list[dict]) -> tuple[list[float], list[float]]:
    """(predicted, achieved) site max, µs, of the points that have both: the achieved
    delay (``delay_ns``, what the injector did), not the requested one, which is the
    schedule's own draw and agrees with its prediction by construction."""
    pts = [p for p in points if p["site_max_predicted_us"] is not None
           and p.get("site_max_achieved_us") is not None]
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
