"""What ``jitterlab fit`` writes: the table it prints, ``fit.json``, ``fits.toml`` (every
candidate as a ``[[jitter]]`` table for ``run`` and ``simulate``, the best first), the QQ
plots and the report (the page design of ``experiments/page.py``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from . import page as pg
from .atomic import write_bytes_atomic, write_text_atomic
from .cli_util import strict
from .report_plots import save, style

QQ_PLOT = "qq.png"
_QQ_POINTS = 400


def _us(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e6:.4g}"


def jitter_name(family: str) -> str:
    """A candidate's name as a ``[[jitter]]`` name: ``shifted(gamma)`` -> ``fit-shifted-gamma``."""
    return "fit-" + family.replace("(", "-").replace(")", "")


def params_text(c: dict[str, Any], durations: frozenset[str]) -> str:
    """``name value [low, high]`` per parameter, durations in µs."""
    out = []
    for name, value in c["params"].items():
        lo, hi = c["intervals"].get(name, (None, None))
        if name in durations:
            v, a, b, unit = _us(value), _us(lo), _us(hi), " µs"
        else:
            v, a, b, unit = (f"{value:.4g}", "n/a" if lo is None else f"{lo:.4g}",
                             "n/a" if hi is None else f"{hi:.4g}", "")
        out.append(f"{name} {v}{unit} [{a}, {b}]")
    return "; ".join(out)


def _tail_cell(t: dict | None) -> str:
    if t is None:
        return "n/a (too few samples)"
    return (f"{_us(t['fit'])} vs {_us(t['data'])} [{_us(t['data_low'])}, "
            f"{_us(t['data_high'])}]")


def p_text(p: float | None, bootstrap: int) -> str:
    """A bootstrap p-value; at its floor 1/(B+1) (no replicate reached the observed A^2)
    an upper bound."""
    if p is None:
        return "n/a (no bootstrap)"
    return f"<= {p:.3f}" if p <= 1 / (bootstrap + 1) + 1e-12 else f"{p:.3f}"


def rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One display row per candidate, best (lowest BIC) first."""
    from jitter_models.fitters import FITTERS

    out = []
    for c in data["candidates"]:
        out.append({
            "family": c["family"], "params": params_text(c, FITTERS[c["family"]].durations),
            "loglik": round(c["loglik"], 1), "aic": round(c["aic"], 1),
            "bic": round(c["bic"], 1), "ad": round(c["ad"], 3),
            "p_value": p_text(c["p_value"], data["bootstrap"]),
            "p99": _tail_cell(c["tail"].get("p99")),
            "p999": _tail_cell(c["tail"].get("p999"))})
    return out


def table_text(data: dict[str, Any]) -> str:
    """The table ``fit`` prints."""
    head = ("family", "log-lik", "AIC", "BIC", "AD p", "p99 µs: fit vs data [95%]",
            "p99.9 µs: fit vs data [95%]")
    lines = [" | ".join(head)]
    for r in rows(data):
        lines.append(" | ".join((r["family"], f"{r['loglik']:.1f}", f"{r['aic']:.1f}",
                                 f"{r['bic']:.1f}", r["p_value"], r["p99"], r["p999"])))
        lines.append(f"    {r['params']}")
    return "\n".join(lines)


def toml_text(data: dict[str, Any]) -> str:
    """Every candidate as a ``[[jitter]]`` table, the best first: paste one into a sweep
    or simulate spec (or give its ``dist`` to ``--jitter``)."""
    lines = [f"# jitterlab fit: {data['source']}",
             "# every candidate, best (lowest BIC) first; each [[jitter]] table is ready for",
             "# `jitterlab run` and `jitterlab simulate` specs, its dist for --jitter", ""]
    for i, c in enumerate(data["candidates"]):
        p = p_text(c["p_value"], data["bootstrap"])
        lines += [f"# {'best: ' if i == 0 else ''}{c['family']}: BIC {c['bic']:.1f}, "
                  f"AD p-value {p}", "[[jitter]]", f'name = "{jitter_name(c["family"])}"',
                  f'dist = "{c["dist"]}"', ""]
    return "\n".join(lines)


def qq_plot(x: np.ndarray, data: dict[str, Any]) -> bytes:
    """One QQ panel per candidate: the fit's quantiles against the data's (log axes where
    the samples span more than a factor of 30), the line y = x; levels spread evenly and
    denser in the upper tail."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    from jitter_models.distributions import parse

    xs = np.sort(x)
    n = xs.size
    body = np.linspace(0.5 / n, 0.99, _QQ_POINTS)
    tail = 1 - np.geomspace(0.01, 0.5 / n, _QQ_POINTS // 2)
    levels = np.unique(np.concatenate([body, tail]))
    data_q = xs[np.minimum((levels * n).astype(int), n - 1)] * 1e6
    cands = data["candidates"]
    cols = 3 if len(cands) > 4 else 2
    nrows = math.ceil(len(cands) / cols)
    with style():
        fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.6 * nrows),
                                 squeeze=False)
        lo, hi = data_q.min(), data_q.max()
        log = hi / lo > 30  # log axes where the samples span decades
        for ax, c in zip(axes.flat, cands):
            fit_q = np.asarray(parse(c["dist"]).ppf(levels), dtype=float) * 1e6
            ax.plot([lo, hi], [lo, hi], color="#999999", lw=1, label="y = x")
            ax.plot(data_q, fit_q, ".", ms=3, color="#1f77b4")
            if log:
                ax.set_xscale("log")
                ax.set_yscale("log")
                for axis in (ax.xaxis, ax.yaxis):
                    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            top = min(float(np.nanmax(fit_q)), 2 * hi)  # a far heavier tail: cut at 2x
            ax.set_ylim(min(lo, float(np.nanmin(fit_q))) * 0.95, max(top, hi) * 1.05)
            ax.set_title(c["family"], fontsize=10)
            ax.set_xlabel("data quantile (µs)")
            ax.set_ylabel("fitted quantile (µs)")
        for ax in list(axes.flat)[len(cands):]:
            ax.axis("off")
        fig.tight_layout()
        return save(fig)


def _cell(v: Any) -> str:
    return "n/a" if v is None else str(v)


def _page(data: dict[str, Any], png: bytes) -> pg.Page:
    best = data["best"]
    p = p_text(best["p_value"], data["bootstrap"])
    t99 = best["tail"].get("p99")
    facts = (("samples", data["source"]),
             ("range", f"min {_us(data['min'])} µs, median {_us(data['median'])} µs, max "
                       f"{_us(data['max'])} µs"),
             ("best (BIC)", best["dist"]),
             ("bootstrap", f"{data['bootstrap']} parametric replicates per candidate "
                           f"(seed {data['seed']})"))
    heads = [f"Best by BIC: {best['family']} (AD p-value {p}); its p99 "
             f"{_tail_cell(t99)} µs (fit vs data, the data's 95% interval)."]
    worst_ok = [c["family"] for c in data["candidates"]
                if c["p_value"] is not None and c["p_value"] >= 0.05]
    heads.append("Not rejected at 5% by the bootstrap AD test: "
                 + (", ".join(worst_ok) if worst_ok else "none of the candidates") + ".")
    heads += [f"Warning: {w}." for w in data.get("warnings", [])]
    table = pg.Table.of("Every candidate, best (lowest BIC) first", rows(data), (
        "family", pg.Column("params", "parameters [95% interval]"),
        pg.Column("loglik", "log-likelihood"), pg.Column("aic", "AIC"), pg.Column("bic", "BIC"),
        pg.Column("ad", "AD A²"), pg.Column("p_value", "AD p-value (bootstrap)")), _cell)
    tails = pg.Table.of("Tail check: the fit's percentiles against the data's", rows(data), (
        "family", pg.Column("p99", "p99 (µs): fit vs data [95% interval]"),
        pg.Column("p999", "p99.9 (µs): fit vs data [95% interval]")), _cell)
    alt = (f"A grid of {len(data['candidates'])} QQ plots, one per candidate: the fitted "
           "quantiles against the data's (µs), with the line y = x.")
    cap = ("Read the right end of each panel: points above the line are a fit whose tail is "
           "heavier than the data's, below it lighter (a panel's top is cut at twice the "
           "largest sample). A good fit's points stay on the line out to the largest "
           "samples.")
    sections = (
        pg.Section("The candidates", "Each family fitted by maximum likelihood; BIC ranks them "
                "(the best is the lowest), AIC shown beside it.", (
                    table, pg.Definitions((
                        ("AD p-value", "Anderson-Darling goodness of fit, its p-value by a "
                         "parametric bootstrap (refitting each replicate): a plain table "
                         "p-value is wrong once the parameters are estimated"),
                        ("interval", "95%, the basic bootstrap interval from the same "
                         "refits (on the log scale for a positive parameter, logit for the "
                         "weight, linear for the shift)"),
                        ("tail check", "the fit's p99 and p99.9 against the data's (nearest "
                         "rank) and its distribution-free 95% interval; a fit outside the "
                         "interval misses the tail"))), tails)),
        pg.Section("QQ plots", "", (pg.Figure(QQ_PLOT, png, alt, cap),)),
        pg.Section("Use it", "", (pg.Paragraph(
            f"fits.toml holds every candidate as a [[jitter]] table (the best first) for "
            f"`jitterlab run` and `jitterlab simulate` specs; the best as a one-line "
            f"schedule: {best['dist']}"),)))
    return pg.Page(f"jitterlab fit: {data['name']}", data["source"],
                pg.Summary(facts, tuple(heads)), sections)


def write_fit(out: Path, x: np.ndarray, data: dict[str, Any], json_file: str | None) -> None:
    """Every file of a fit under ``out`` (and the JSON also at ``json_file``)."""
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(strict(data), indent=1, allow_nan=False) + "\n"
    png = qq_plot(x, data)
    write_bytes_atomic(out / QQ_PLOT, png)
    write_text_atomic(out / "fits.toml", toml_text(data))
    page = _page(data, png)
    write_text_atomic(out / "report.md", pg.to_markdown(page))
    write_text_atomic(out / "report.html", pg.to_html(page))
    write_text_atomic(out / "fit.json", text)
    if json_file:
        write_text_atomic(Path(json_file), text)
