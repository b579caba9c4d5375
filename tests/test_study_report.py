"""The study's files (experiments/study_report.py) from a small synthetic study: every
image captioned with alt text, every table with a header row, no empty cell in the
verdict table and a missing crossover said in words, study.json round-tripping, the CSV
one line per row, and report.md carrying the same sections as report.html."""

from __future__ import annotations

import csv
import io
import json
import re
from html.parser import HTMLParser

from experiments.study import ROW_KEYS
from experiments.study_report import STUDY_TABLE, write_study

VARIANTS = ("lognormal", "spikes")
NS = (1, 2, 4, 8)


def _tier(bw: float, law: str, ratio: float) -> dict:
    return {"bandwidth_gbps": bw, "latency": law, "latency_mean_us": 4.0,
            "latency_p99_p50": ratio}


def _points(workload: str, model: str, slow: dict[str, float]) -> list[dict]:
    """Step time grows with N, faster on a network with a larger ``slow`` factor."""
    out = []
    for n in NS:
        for net, k in slow.items():
            mean = 1000.0 + k * 100.0 * n
            out.append({"workload": workload, "model": model, "network": net,
                        "world_size": n, "mean_us": mean, "p99_us": 1.3 * mean,
                        "compute_us": 1000.0, "efficiency": 1000.0 / mean,
                        "efficiency_p99": 1000.0 / (1.3 * mean), "samples": 8, "steps": 20})
    return out


def _row(workload: str, model: str, variant: str, c: int | None) -> dict:
    verdict = ("no crossover on the mean step: the fast network is faster at N = 8, the "
               "largest N studied" if c is None else
               f"the steady network wins on the mean step from N = {c}")
    return {"workload": workload, "model": model, "variant": variant, "crossover_n": c,
            "crossover_n_p99": c, "useful_n_steady": 8, "useful_n_fast": None,
            "verdict": verdict}


def study_data() -> dict:
    entries = [("tp_decode", "Llama-3-70B"), ("dp_step", "Llama-3-8B")]
    networks = [{"network": "steady", "intra": _tier(450.0, "lognormal(a)", 1.26),
                 "inter": _tier(50.0, "lognormal(b)", 1.26)}]
    networks += [{"network": v, "intra": _tier(450.0, "lognormal(a)", 1.26),
                  "inter": _tier(100.0, f"{v}(c)", 6.4)} for v in VARIANTS]
    return {
        "schema": 1, "name": "tiny <study>", "seed": 3, "steps": 20, "threshold": 0.5,
        "networks": networks,
        "entries": [{"workload": w, "model": m, "algorithm": "ring", "world_sizes": list(NS),
                     "describe": f"{w} of {m}", "dtype": "bfloat16", "batch": 1}
                    for w, m in entries],
        "rows": [_row("tp_decode", "Llama-3-70B", "lognormal", 4),
                 _row("tp_decode", "Llama-3-70B", "spikes", 2),
                 _row("dp_step", "Llama-3-8B", "lognormal", None),
                 _row("dp_step", "Llama-3-8B", "spikes", 8)],
        "points": (_points("tp_decode", "Llama-3-70B", {"steady": 1.0, "lognormal": 1.5,
                                                        "spikes": 2.0})
                   + _points("dp_step", "Llama-3-8B", {"steady": 1.0, "lognormal": 0.5,
                                                       "spikes": 1.2})),
        "sensitivity": [
            {"workload": "tp_decode", "model": "Llama-3-70B", "world_size": n,
             "ratios": [1.26, 2.0, 10.0], "steady_mean_us": 1000.0,
             "fast_mean_us": [900.0, 1000.0 + n, 1500.0],
             "break_even_ratio": b}
            for n, b in ((2, {"value": 1.9, "bound": None, "text": "up to 1.9"}),
                         (8, {"value": None, "bound": "below",
                              "text": "the steady network wins even at p99/p50 1.26"}))],
        "checks": [{"workload": "tp_decode", "model": "Llama-3-70B", "world_size": 8,
                    "variant": "lognormal", "approx_mean_us": 1010.0, "full_mean_us": 1000.0,
                    "approx_p99_us": 1300.0, "full_p99_us": 1250.0, "mean_error": 0.01,
                    "p99_error": 0.04, "full_steps": 10}],
        "sources": {"intra": "NVLink datasheet", "steady": "a 400 Gb/s port"},
    }


class Outline(HTMLParser):
    """Images with their figure's caption, tables with header and body cells, headings."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.images: list[dict] = []
        self.figures: list[dict] = []
        self.inside: list[dict] = []  # the open figures, innermost last (a gallery nests)
        self.tables: list[dict] = []
        self.headings: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        self.open.append(tag)
        if tag == "figure":
            self.figures.append({"caption": ""})
            self.inside.append(self.figures[-1])
        if tag == "img":
            self.images.append({"alt": a.get("alt", ""),
                                "figure": self.inside[-1] if self.inside else None})
        if tag == "table":
            self.tables.append({"caption": "", "th": 0, "rows": []})
        if tag == "th":
            self.tables[-1]["th"] += 1
        if tag == "tr" and "tbody" in self.open:
            self.tables[-1]["rows"].append([])
        if tag == "td":
            self.tables[-1]["rows"][-1].append("")
        if re.fullmatch(r"h[2-6]", tag):
            self.headings.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure" and self.inside:
            self.inside.pop()
        if tag in self.open:
            while self.open.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        if "figcaption" in self.open:
            self.inside[-1]["caption"] += data
        if "caption" in self.open:
            self.tables[-1]["caption"] += data
        if "td" in self.open:
            self.tables[-1]["rows"][-1][-1] += data
        if self.open and re.fullmatch(r"h[2-6]", self.open[-1]):
            self.headings[-1] += data


def test_study_files(tmp_path) -> None:
    data = study_data()
    write_study(tmp_path / "out", data, json_file=str(tmp_path / "copy.json"))
    out = tmp_path / "out"
    page = Outline()
    page.feed((out / "report.html").read_text())

    # 2 step-time plots, 2 efficiency plots, 1 sensitivity panel (dp_step has none)
    assert len(page.images) == 5
    for img in page.images:
        assert img["alt"].strip() and img["figure"] is not None
        assert img["figure"]["caption"].strip()
    assert page.tables and all(t["th"] > 0 for t in page.tables)

    study = next(t for t in page.tables if t["caption"] == STUDY_TABLE)
    assert len(study["rows"]) == len(data["rows"])
    assert all(cell.strip() for row in study["rows"] for cell in row)
    none_row = study["rows"][2]
    assert none_row[:3] == ["dp_step", "Llama-3-8B", "lognormal"]
    assert none_row[3:5] == ["none", "none"]
    text = (out / "report.html").read_text()
    assert "dp_step Llama-3-8B, lognormal: no crossover on the mean step" in text
    assert ("dp_step Llama-3-8B: on the p99 step the steady network is no slower from N = 8 "
            "(spikes); no crossover up to N = 8 (lognormal)") in text  # the summary
    captions = " ".join(f["caption"] for f in page.figures)
    assert ("On the mean step the steady network is no slower from N = 8 (spikes); no crossover "
            "up to N = 8 (lognormal)") in captions

    assert json.loads((out / "study.json").read_text()) == data
    assert json.loads((tmp_path / "copy.json").read_text()) == data
    rows = list(csv.reader(io.StringIO((out / "study.csv").read_text())))
    assert rows[0] == list(ROW_KEYS) and len(rows) == 1 + len(data["rows"])
    assert rows[3][3] == ""  # no crossover: an empty CSV cell, the verdict says it in words
    assert "no crossover" in rows[3][-1]
    points = list(csv.reader(io.StringIO((out / "points.csv").read_text())))
    assert len(points) == 1 + len(data["points"])

    md = (out / "report.md").read_text()
    md_titles = re.findall(r"^#{2,6} (.+)$", md, flags=re.M)
    assert md_titles == page.headings
    assert "tiny <study>" not in text and "tiny &lt;study&gt;" in text
    for name in re.findall(r"!\[[^]]*\]\(([^)]+)\)", md):
        assert (out / name).read_bytes().startswith(b"\x89PNG")
