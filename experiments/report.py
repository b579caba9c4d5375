"""The scaling report of a sweep: ``report.md`` with PNG plots beside it, a self-contained
``report.html`` (plots embedded), and CSV tables, from ``points/*/summary.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jitter_models.errors import BadInput
from jitter_models.sim_stats import useful_work
from jitter_models.syntax import escape
from jitter_models.units import MAX_DELAY_S, format_duration

from .analysis import predicted_site_max_us, scaling, useful_parallelism
from .atomic import write_bytes_atomic, write_text_atomic
from .csv_cells import csv_text
from .page import (
    Definitions,
    Figure,
    Gallery,
    Note,
    Page,
    Paragraph,
    Section,
    Summary,
    Table,
    to_html,
    to_markdown,
)
from .report_plots import (
    BREAKDOWN_PLOT,
    CAPTIONS,
    HEATMAP_CAPTION,
    SITE_MAX_PLOT,
    heatmap_caption,
    heatmap_name,
    site_max_pairs,  # noqa: F401 (the report's API)
)
from .report_plots import plots as _plots
from .report_plots import site_max_caption as _site_max_caption

DEFINITIONS = [
    ("step latency", "per token: the max over ranks of the step's duration on that rank"),
    ("p50, p99", "nearest-rank percentiles over the recorded (post-warm-up) steps, with "
                 "95% distribution-free intervals (binomial order statistics)"),
    ("speedup S(N)", "work(N) T(1)/T(N) for the same schedule, delays injected at N = 1 "
                     "too; work(N) = 1 when N ranks share one step's work (tp_decode), N "
                     "when each rank's work is fixed (bsp, benchmarks: weak scaling)"),
    ("efficiency E(N)", "S(N)/N, from the mean and from the p99 step latency"),
    ("jitter tax", "T_schedule(N)/T_none(N)"),
    ("useful parallelism", "the largest N with E_mean(N) >= 0.5; N_opt = argmin p99"),
    ("site max", "mean over collectives of the max over ranks of the injected delay, "
                 "µs: requested (what the schedule asked, delay_req_ns) and achieved (what "
                 "the injector did, delay_ns); predicted: E[max] from the order statistics "
                 "of the schedule"),
]


def load_summaries(root: Path, ids: dict[str, dict[str, Any]], *, skip_bad: bool = False
                   ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """The summaries of the points this spec expands to (a folder reused with another
    spec may hold others: they are not this sweep's), each checked against its files.
    A bad point raises ``BadPoint`` naming the file; with ``skip_bad`` it is left out and
    listed in the second value instead."""
    from .store import BadPoint, check_point

    out, skipped = [], []
    points = root / "points"
    for path in sorted(points.iterdir()) if points.is_dir() else ():
        if path.name not in ids:
            continue
        try:
            out.append(check_point(path, ids[path.name]))
        except BadPoint as exc:
            if not skip_bad:
                raise
            skipped.append({"point": path.name, "file": str(exc.file), "why": exc.why})
    return out, skipped


def build(root: str | Path, *, skip_bad: bool = False) -> dict[str, Any]:
    """Tables for the report: per point, per (schedule, batch, N) scaling, headlines. A
    point whose files do not read back raises ``BadPoint``, or with ``skip_bad`` is left
    out and listed under ``skipped``."""
    from .model import build as build_model
    from .model import rank_step_latencies
    from .spec import parse_spec
    from .sweep import expand

    root = Path(root)
    manifest = _read_manifest(root / "manifest.json")
    spec = parse_spec(manifest["spec"], default_name=manifest.get("name", root.name))
    expected = {p.id: p for p in expand(spec)}
    schedules = {s.name: s for s in spec.schedules}
    points = []
    summaries, skipped = load_summaries(
        root, {pid: p.identity() for pid, p in expected.items()}, skip_bad=skip_bad)
    for s in summaries:
        pred = predicted_site_max_us(schedules[s["schedule"]], spec.seed, s["world_size"],
                                     spec.ranks_per_node)
        points.append(point_row(s, pred))
    rows, useful, models = [], {}, {}
    for batch in spec.batches:
        mine = [p for p in points if p["batch"] == batch]
        part = scaling([{k: p[k] for k in ("schedule", "world_size", "mean_s", "p99_s")}
                        for p in mine], useful_work(spec.work.compute_share(spec.params)))
        rows += [{**r, "batch": batch} for r in part]
        useful[batch] = useful_parallelism(part)
        models[batch] = build_model(mine, schedules, spec=spec, batch=batch,
                                    step_latencies=rank_step_latencies(root))
    failed = []
    for pid in sorted(expected):
        path = root / "failed" / f"{pid}.json"
        if path.exists() and not (root / "points" / pid / "summary.json").exists():
            try:
                info = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError):
                info = None
            if not isinstance(info, dict):  # a damaged record still says the point failed
                info = {"point": pid, "error": f"(unreadable failure record {path})"}
            failed.append(info)
    return {"spec": spec, "points": points, "scaling": rows, "useful": useful,
            "headlines": _headlines(rows, useful, len(spec.batches) > 1,
                                    {(p["schedule"], p["batch"], p["world_size"]):
                                     p["p99_ci_us"] for p in points},
                                    [sch.name for sch in spec.schedules]),
            "largest": _largest(root, _in_order(points, spec), len(spec.batches) > 1),
            "models": models,
            "failed": failed, "skipped": skipped,
            "expected_points": len(expected)}


def point_row(s: dict[str, Any], predicted_site_max_us: float | None) -> dict[str, Any]:
    """One point's row of points.csv and the report's tables, from its summary."""
    lat = s["step_latency"]
    return {"point": s["point"], "schedule": s["schedule"], "world_size": s["world_size"],
            "batch": s["batch"], "n_steps": lat["n"],
            "p50_us": lat["p50_us"], "p99_us": lat["p99_us"],
            "p99_ci_us": lat["p99_ci_us"], "mean_us": lat["mean_us"],
            "mean_se_us": lat.get("mean_se_us"),
            "mean_s": lat["mean_us"] / 1e6, "p99_s": lat["p99_us"] / 1e6,
            **{f"{k}": v for k, v in s["decomposition_us"].items() if k.endswith("_us")},
            "site_max_requested_us": s["site_max_us"]["requested_us"],
            # None in summaries written before it was kept: n/a in the report
            "site_max_achieved_us": s["site_max_us"].get("achieved_us"),
            "site_max_predicted_us": predicted_site_max_us,
            # draws above the maximum delay, clipped to it (summed over ranks)
            "delays_clipped": int(s.get("delays_clipped") or 0),
            # how the ranks injected (e.g. "host (sleep only: more ranks than cores)");
            # None in summaries written before it was kept
            "injector": _injector(s.get("injectors"))}


def _injector(names: Any) -> str | None:
    if not isinstance(names, list) or not names:
        return None
    return ", ".join(str(x) for x in names)


def _read_manifest(path: Path) -> dict[str, Any]:
    from .store import MAX_MANIFEST_BYTES, read_json_file

    if not path.exists() and not path.is_symlink():
        raise BadInput(f"dir: {str(path.parent)!r} is not a jitterlab result folder "
                         "(no manifest)")
    try:
        doc = read_json_file(path, max_bytes=MAX_MANIFEST_BYTES)
    except OSError as exc:
        raise BadInput(f"{path}: unreadable ({exc.strerror or exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("spec"), dict):
        raise BadInput(f"{path}: not a jitterlab manifest (no 'spec' table)")
    return doc


def _largest(root: Path, points: list[dict], by_batch: bool) -> dict[str, dict[str, Any]]:
    """Per schedule, the largest-N point's step latencies and per-rank mean wait per site
    (t_done - t_arrive, µs), read back from its rank files."""
    from collectives.timing import read_rank_file

    from .analysis import step_latencies

    out: dict[str, dict[str, Any]] = {}
    for p in points:
        key = f"{p['schedule']} (batch {p['batch']})" if by_batch else p["schedule"]
        if key in out and out[key]["world_size"] >= p["world_size"]:
            continue
        files = sorted((root / "points" / p["point"]).glob("rank-*.parquet"))
        tables = [read_rank_file(f)[0] for f in files]
        waits = []
        for t in tables:
            site = t["site"] >= 0
            n_sites = int(t["site"][site].max()) + 1
            w = (t["t_done_ns"][site] - t["t_arrive_ns"][site]).reshape(-1, n_sites)
            waits.append(w.mean(axis=0) / 1e3)
        out[key] = {"schedule": p["schedule"], "world_size": p["world_size"],
                    "steps_s": step_latencies(tables), "wait_us": waits}
    return out


def _p99_text(p99_s: float, ci_us: list | None) -> str:
    """'7.80 ms (95% CI 7.10-9.20)', or why no interval: too few steps to bound p99."""
    text = f"{p99_s * 1e3:.2f} ms"
    if not ci_us:
        return text
    lo, hi = ci_us
    if lo is None or hi is None:
        return f"{text} (too few steps to bound it: no 95% CI)"
    return f"{text} (95% CI {lo / 1e3:.2f}-{hi / 1e3:.2f})"


def _headlines(rows: list[dict], useful: dict, by_batch: bool,
               p99_ci: dict | None = None, order: list[str] | None = None) -> dict[str, str]:
    """One sentence per schedule (and batch), at its largest N. ``p99_ci``: (schedule,
    batch, N) -> the p99's 95% interval in µs, [lo, hi] with None for an unbounded side."""
    out = {}
    rank = {name: i for i, name in enumerate(order or [])}
    for key in sorted({(r["schedule"], r["batch"]) for r in rows},
                      key=lambda k: (rank.get(k[0], len(rank)), k)):
        name, batch = key
        mine = sorted((r for r in rows if (r["schedule"], r["batch"]) == key),
                      key=lambda r: r["world_size"])
        last = mine[-1]
        label = escape(f"{name} (batch {batch})" if by_batch else name)
        ci = (p99_ci or {}).get((name, batch, last["world_size"]))
        parts = [f"{label}: p99 step latency {_p99_text(last['p99_s'], ci)} at N = "
                 f"{last['world_size']}"]
        if last["efficiency_mean"] is not None:
            parts.append(f"efficiency {last['efficiency_mean']:.2f}")
        if last["jitter_tax_p99"] is not None and name != "none":
            parts.append(f"jitter tax on p99 x{last['jitter_tax_p99']:.3f}")
        u = useful[batch].get(name, {})
        n_useful = u.get("n_useful")
        if n_useful is None and all(r["efficiency_mean"] is None for r in mine):
            useful_text = "n/a (no N = 1 point to measure efficiency against)"
        else:
            useful_text = "n/a" if n_useful is None else str(n_useful)
        parts.append(f"useful parallelism {useful_text}, N_opt {u.get('n_opt')}")
        out[label] = "; ".join(parts) + "."
    return out


def write_report(root: str | Path, *, skip_bad: bool = False) -> dict[str, Any]:
    """report.md, report.html, plots and CSV tables under ``root``; returns the data."""
    root = Path(root)
    data = build(root, skip_bad=skip_bad)
    plots = _plots(data)
    for name, png in plots.items():
        write_bytes_atomic(root / name, png)  # a full disk leaves no partial .png.tmp
    from .model import VALIDATION_COLUMNS, validation_csv_rows

    validation = validation_csv_rows(data["models"])
    write_text_atomic(root / "model_validation.csv",
                      csv_text(validation, list(VALIDATION_COLUMNS)) if validation
                      else ",".join(VALIDATION_COLUMNS) + "\n")
    for name, table in (("points.csv", data["points"]), ("scaling.csv", data["scaling"])):
        table = [{k: v for k, v in r.items()} for r in table]
        write_text_atomic(root / name, _csv(table))
    write_text_atomic(root / "report.md", _markdown(data, plots))
    write_text_atomic(root / "report.html", _html(data, plots))
    return data


def _csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    return csv_text(rows, list(rows[0]))  # text cells guarded against formula injection


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return escape(str(v))  # a name's control characters (an ANSI escape) are not raw


def _in_order(rows: list[dict], spec) -> list[dict]:
    """Rows in the spec's schedule order, then batch, then N: the order of every table
    and legend."""
    order = {sch.name: i for i, sch in enumerate(spec.schedules)}
    return sorted(rows, key=lambda r: (order.get(r["schedule"], len(order)),
                                       r.get("batch", 0), r["world_size"]))


def _figure(plots: dict[str, bytes], name: str, caption: str = "") -> tuple:
    """The plot ``name`` as a figure (its alt text and caption from ``CAPTIONS``), or
    nothing when it was not drawn."""
    if name not in plots:
        return ()
    alt, default = CAPTIONS[name]
    return (Figure(name, plots[name], alt, caption or default),)


def _page(data: dict, plots: dict[str, bytes]) -> Page:
    """The run report as a document: summary, one section per question, definitions."""
    spec = data["spec"]
    meta = (f"{escape(spec.work.describe(spec.params))}, world sizes "
            f"{list(spec.world_sizes)}, batch {list(spec.batches)}, backend "
            f"{spec.backend}, {spec.steps} recorded steps per point after {spec.warmup} "
            f"warm-up; {len(data['points'])} of {data['expected_points']} points complete.")
    sections = [*_trouble(data), _latency_section(data, plots),
                _efficiency_section(data, plots), _time_section(data, plots),
                _delay_section(data, plots), *_model_sections(data, spec, plots),
                Section("Definitions", blocks=(Definitions(tuple(DEFINITIONS)),))]
    return Page(f"jitterlab report: {escape(spec.name)}", meta,
                Summary(_facts(data), tuple(data["headlines"].values())), tuple(sections))


def _facts(data: dict) -> tuple[tuple[str, str], ...]:
    """The key-value block on top: completeness, the measured N, the model's error."""
    facts = [("points complete", f"{len(data['points'])} of {data['expected_points']}")]
    if data["failed"]:
        facts.append(("failed points", str(len(data["failed"]))))
    ns = sorted({p["world_size"] for p in data["points"]})
    if ns:
        facts.append(("measured N", ", ".join(map(str, ns))))
    out = [r for m in data["models"].values() for r in m["validation"] if not r["in_sample"]]
    if out:
        worst = {k: max(abs(r[k]) for r in out) for k in ("rel_error_mean", "rel_error_p99")}
        facts.append(("model error out of sample", f"mean within {worst['rel_error_mean']:.0%}"
                      f", p99 within {worst['rel_error_p99']:.0%} over {len(out)} points"))
    return tuple(facts)


def _trouble(data: dict) -> list[Section]:
    """Failed and unreadable points, first: they change what every other number means."""
    out = []
    if data["failed"]:
        out.append(Section("Failed points", blocks=(Table.of(
            "Points that failed", data["failed"],
            ["point", "schedule", "world_size", "batch", "error"], _fmt),)))
    if data["skipped"]:
        out.append(Section("Skipped points (files that do not read back)", blocks=(
            Table.of("Points left out", data["skipped"], ["point", "file", "why"], _fmt),)))
    return out


def _scaled(data: dict) -> list[dict]:
    # (scaling.csv keeps seconds; people read ms)
    return [r | {"mean_ms": r["mean_s"] * 1e3, "p99_ms": r["p99_s"] * 1e3}
            for r in _in_order(data["scaling"], data["spec"])]


def _latency_section(data: dict, plots: dict[str, bytes]) -> Section:
    return Section("How does step latency grow with N?", (
        "Step latency per token is the max over ranks of the step's duration; p99 and mean "
        "over the recorded steps of each point."), (
        *_figure(plots, "latency_vs_n.png"), *_figure(plots, "step_latency_cdf.png"),
        Table.of("Step latency per schedule and N", _scaled(data),
                 ["schedule", "batch", "world_size", "mean_ms", "p99_ms",
                  "tail_amplification"], _fmt)))


def _efficiency_section(data: dict, plots: dict[str, bytes]) -> Section:
    return Section("How efficient is scaling?", (
        "Efficiency E(N) = S(N)/N against the same schedule at N = 1 (delays are injected "
        "there too); the jitter tax is the step latency over the no-jitter schedule's at "
        "the same N."), (
        *_figure(plots, "efficiency_vs_n.png"),
        Table.of("Efficiency and jitter tax per schedule and N", _scaled(data),
                 ["schedule", "batch", "world_size", "efficiency_mean", "efficiency_p99",
                  "jitter_tax_p99"], _fmt)))


def _time_section(data: dict, plots: dict[str, bytes]) -> Section:
    points = _in_order(data["points"], data["spec"])
    blocks: list = list(_figure(plots, BREAKDOWN_PLOT))
    maps = tuple(Figure(heatmap_name(label), plots[heatmap_name(label)],
                        *heatmap_caption(label, big))
                 for label, big in data["largest"].items() if heatmap_name(label) in plots)
    if maps:
        blocks.append(Gallery(maps, HEATMAP_CAPTION))
    clipped = sum(p.get("delays_clipped", 0) for p in data["points"])
    if clipped:
        blocks.append(Paragraph(
            f"to {format_duration(MAX_DELAY_S)}, the maximum delay (delays_clipped: draws of "
            "an unbounded law above it, over all ranks and steps, warm-up included): those "
            "points measure the clipped law, not the schedule's.",
            lead=f"{clipped} injected delays were clipped"))
    blocks.append(Table.of("Every point (raw)", points, [
        "schedule", "batch", "world_size", "n_steps", "p50_us", "p99_us", "p99_ci_us",
        "compute_us", "delay_us", "skew_wait_us", "collective_us", "site_max_requested_us",
        "site_max_achieved_us", "site_max_predicted_us", "delays_clipped"], _fmt,
        collapsible=True))
    return Section("Where does the time go?", (
        "Per step: compute, injected delay, waiting for the slowest rank (arrival skew) "
        "and the collective's own time; then who waits at each schedule's largest N."),
        tuple(blocks))


def _delay_section(data: dict, plots: dict[str, bytes]) -> Section:
    return Section("Did the injector deliver the schedule?", (
        "The delay the ranks achieved at a site, against what the order statistics of the "
        "schedule predict for the max over N ranks."), _figure(
        plots, SITE_MAX_PLOT, _site_max_caption(data["points"])
        + " Read the distance above the line."))


def _model_sections(data: dict, spec, plots: dict[str, bytes]) -> list[Section]:
    """Per batch: the fit, measured vs simulated, extrapolation; the model plot (one for
    every batch) in the first."""
    out = []
    fig = _figure(plots, "model_efficiency_vs_n.png")
    for batch, m in data["models"].items():
        tag = f" (batch {batch})" if len(data["models"]) > 1 else ""
        title = f"Model: the simulator fitted on the no-jitter points{tag}"
        question = "Does the model fit the measured points, and what does it say beyond them?"
        if m["why"]:
            out.append(Section(title, question, (Note(f"No model: {m['why']}."), *fig)))
        else:
            out.append(Section(title, question, (Paragraph(_fit_text(m["fit"], spec)), *fig,
                                                 *_model_tables(m, tag))))
        fig = ()
    return out


def _model_tables(m: dict, tag: str) -> tuple:
    keep = {1, 8, 64, 512, 4096, 65536, 1 << 20}
    extrapolation = Section(f"Extrapolation (simulator only){tag}", (
        "Beyond the measured world sizes only the simulator speaks: the network tier fitted "
        "here is used between nodes too unless the spec gives [network], and the baseline "
        "noise is the largest measured N's."), (Table.of(
            "Simulated step latency and efficiency", [r for r in m["extrapolation"]
                                                      if r["world_size"] in keep],
            ["schedule", "world_size", "model_mean_us", "model_p99_us", "efficiency"], _fmt,
            collapsible=True),))
    return (Table.of("Measured against the model", m["validation"], [
        "schedule", "world_size", "measured_mean_us", "model_mean_us", "rel_error_mean",
        "measured_p99_us", "model_p99_us", "rel_error_p99", "in_sample"], _fmt),
        extrapolation)


def _fit_text(f: dict, spec) -> str:
    """What the fit found, in one paragraph."""
    bw = ("unlimited: alpha and bandwidth cannot be separated from these points (one "
          f"message size, {len(f['fitted_on']) - 1} multi-rank world size); their sum "
          f"at {f['message_bytes']} bytes is fitted as alpha"
          if not f["separable"] else "unlimited (the least-squares fit puts the whole "
          "cost in alpha)" if f["bandwidth_gbps"] is None
          else f"{f['bandwidth_gbps']:.3g} GB/s")
    return (f"Fitted on the no-jitter schedules ({', '.join(f['schedules'])}; pooled per N) "
            f"at N = {', '.join(map(str, f['fitted_on']))}: network alpha "
            f"{f['alpha_us']:.3g} µs per hop, bandwidth {bw} (at each measured N the tier is "
            "scaled to its measured collective time; the fit speaks between and beyond "
            f"them); local call {f['local_call_us']:.3g} µs per site; compute per site (µs) "
            f"{_fmt_map(f['compute_site_us'])}; step overhead (µs) "
            f"{_fmt_map(f['overhead_step_us'])}; baseline noise: the no-jitter steps' excess "
            "over their median, as the noise of one mean step's window on the time axis (a "
            "step k windows long holds k of them); "
            f"{escape(spec.work.model_note(spec.params))}. Every other schedule's point is "
            "predicted out of sample (in_sample = false).")


def _fmt_map(d: dict) -> str:
    return ", ".join(f"N={k}: {v:.3g}" for k, v in d.items())


def _markdown(data: dict, plots: dict[str, bytes]) -> str:
    """report.md: the page in Markdown, the plots linked as the PNG files beside it."""
    return to_markdown(_page(data, plots))


def _html(data: dict, plots: dict[str, bytes]) -> str:
    """report.html: the page, self-contained (the plots embedded)."""
    return to_html(_page(data, plots))
