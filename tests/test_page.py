"""The report page (experiments/page.py): escaping, collapsible tables, Markdown and HTML
carrying the same content, and the structure of real run and simulate reports parsed
back with html.parser: every image with alt text in a captioned figure, every table with
a header row, no remote URL, a viewport, the summary before the first section."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from experiments.page import (
    Figure,
    Note,
    Page,
    Palette,
    Paragraph,
    Section,
    Summary,
    Table,
    header,
    to_html,
    to_markdown,
)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(16)


class Outline(HTMLParser):
    """What the structure checks need from a page: images with the figures around them,
    tables with their header cells, every URL, the order of headings."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.images: list[dict] = []  # alt, in_figure, and the figure's caption text
        self.figures: list[dict] = []
        self.tables: list[dict] = []
        self.urls: list[str] = []
        self.viewport = False
        self.sections: list[str] = []  # the id of each <section>, in order
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        self.open.append(tag)
        self.urls += [a[k] for k in ("src", "href") if a.get(k)]
        if tag == "meta" and a.get("name") == "viewport":
            self.viewport = True
        if tag == "section":
            self.sections.append(a.get("id", ""))
        if tag == "figure":
            self.figures.append({"caption": ""})
        if tag == "img":
            self.images.append({"alt": a.get("alt", ""), "figure": self.figures[-1]
                                if "figure" in self.open else None})
        if tag == "table":
            self.tables.append({"thead_th": 0, "rows": 0})
        if tag == "th" and "thead" in self.open:
            self.tables[-1]["thead_th"] += 1
        if tag == "tr" and "tbody" in self.open:
            self.tables[-1]["rows"] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self.open:  # void elements (img, meta) are never closed
            while self.open.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        self.text += data
        if "figcaption" in self.open:
            self.figures[-1]["caption"] += data


def outline(text: str) -> Outline:
    parser = Outline()
    parser.feed(text)
    return parser


def check_structure(text: str) -> Outline:
    """The page rules of the report issue; returns the outline for further checks."""
    got = outline(text)
    assert got.viewport
    assert got.images and got.tables
    for img in got.images:
        assert img["alt"].strip(), img
        assert img["figure"] is not None and img["figure"]["caption"].strip(), img
    for t in got.tables:
        assert t["thead_th"] > 0, t
    remote = [u for u in got.urls if re.match(r"(?i)\s*(https?:|//)", u)]
    assert remote == []
    assert got.sections[0] == "summary" and len(got.sections) > 1
    return got


def test_text_is_escaped_in_html_and_control_characters_are_written_out():
    page = Page("a <b> & c", "meta \x1b[2J", Summary((("k<", "v>"),), ("<i>head</i>",)),
                (Section("S & T", "intro <x>", (Paragraph("p <y>", lead="L<"),
                                                Note("n <z>"))),))
    text = to_html(page)
    for raw in ("<b>", "<i>head</i>", "<x>", "<y>", "<z>", "L<", "\x1b"):
        assert raw not in text
    for shown in ("a &lt;b&gt; &amp; c", "&lt;i&gt;head&lt;/i&gt;", "S &amp; T",
                  "<strong>L&lt;</strong> p &lt;y&gt;", "meta \\x1b[2J"):
        assert shown in text
    assert "\x1b" not in to_markdown(page) and "meta \\x1b[2J" in to_markdown(page)


def test_a_collapsible_table_folds_under_its_title_and_numbers_align_right():
    rows = [{"schedule": "a|b", "p99_us": 1.5, "n": None}, {"schedule": "c", "p99_us": 20.25,
                                                           "n": 3}]
    table = Table.of("Raw points", rows, ["schedule", "p99_us", "n"],
                     lambda v: "n/a" if v is None else str(v), collapsible=True)
    text = to_html(Page("t", "m", Summary(), (Section("S", blocks=(table,)),)))
    assert "<details><summary>Raw points (2 rows)</summary>" in text
    assert '<th scope="col" class="num">p99 (µs)</th>' in text
    assert '<td class="num">20.25</td>' in text and '<td class="num">n/a</td>' in text
    assert "<td>a|b</td>" in text  # text column: left-aligned
    md = to_markdown(Page("t", "m", Summary(), (Section("S", blocks=(table,)),)))
    assert "| schedule | p99 (µs) | n |\n|---|---:|---:|" in md
    assert "| a\\|b | 1.5 | n/a |" in md  # a pipe in a cell does not split it


def test_a_text_column_with_long_cells_wraps_and_short_ones_do_not():
    """A law's description (over 40 characters) wraps so the columns after it stay on a
    1280 px screen (the study's network table); short text and numbers keep to a line."""
    law = "pareto(mean 4 us, shape 1.5, x_m 1.4 us, clipped at 200 x_m = 280 us)"
    rows = [{"tier": "inter", "law": law, "p99_us": 13.6}]
    text = to_html(Page("t", "m", Summary(), (Section("S", blocks=(
        Table.of("T", rows, ["tier", "law", "p99_us"], str),)),)))
    assert f'<td class="wrap">{law}</td>' in text and "<td>inter</td>" in text
    assert '<td class="num">13.6</td>' in text
    assert re.search(r"td\.wrap\{white-space:normal", text)


def test_headers_spell_out_the_unit_of_a_key():
    assert [header(k) for k in ("p99_us", "mean_ms", "busbw_gbps", "size_bytes",
                                "world_size", "mean_s", "_us")] == [
        "p99 (µs)", "mean (ms)", "busbw (GB/s)", "size (bytes)", "world_size", "mean (s)",
        "_us"]


def test_markdown_and_html_carry_the_same_titles_values_and_captions():
    fig = Figure("x.png", PNG, "alt text", "read the slope")
    table = Table.of("T", [{"k": "v1", "x_us": 2.0}], ["k", "x_us"], lambda v: f"{v}")
    page = Page("P", "m", Summary((("points", "2 of 2"),), ("headline one",)), (
        Section("Q one?", "i", (fig, table, Section("Sub", blocks=(Paragraph("z"),)))),
        Section("Q two?")))
    html_text, md = to_html(page), to_markdown(page)
    titles = re.findall(r"<h[23][^>]*>([^<]*)</h[23]>", html_text)
    assert titles == ["Summary", "Q one?", "Sub", "Q two?"]
    assert re.findall(r"^#{2,3} (.*)$", md, flags=re.M) == titles
    for s in ("2 of 2", "headline one", "v1", "2.0", "read the slope", "x (µs)"):
        assert s in html_text and s in md
    assert "![alt text](x.png)" in md  # the PNG beside report.md, embedded in the HTML
    assert "data:image/png;base64," in html_text
    check_structure(html_text)


def test_a_palette_gives_each_schedule_one_colour_in_first_seen_order():
    p = Palette(["none", "exp"])
    assert p.colour("exp") == p.colour("exp") != p.colour("none")
    assert p.colour("late") not in {p.colour("none"), p.colour("exp")}
    assert Palette(["exp", "none"]).colour("exp") == p.colour("none")


# --- real reports ---------------------------------------------------------------------

SIM_SPEC = """
name = "page"
workload = "bsp"
sites_per_step = 2
compute_per_site = "100us"
message_bytes = 0
world_sizes = [4, 64]
steps = 60
seed = 1
[network]
alpha = "1us"
bandwidth_gbps = 100
[[jitter]]
name = "none"
dist = "constant(0s)"
[[jitter]]
name = "exp <b>"
dist = "exponential(10us)"
"""


def test_a_simulate_report_has_the_page_structure(cli, tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(SIM_SPEC)
    r = cli("simulate", str(spec), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "out" / "report.html").read_text()
    got = check_structure(text)
    assert len(got.images) == 2 and "exp <b>" not in text and "exp &lt;b&gt;" in text
    md = (tmp_path / "out" / "report.md").read_text()
    for name in ("sim_latency_vs_n.png", "sim_efficiency_vs_n.png"):
        assert f"]({name})" in md and (tmp_path / "out" / name).stat().st_size > 0


RUN_SPEC = """
name = "page"
model = "tiny"
world_sizes = [1]
compute = "none"
steps = 4
warmup = 0
backend = "gloo"
[[jitter]]
name = "none"
dist = "constant(0s)"
[[jitter]]
name = "exp"
dist = "exponential(5us)"
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real one-rank sweep of two schedules, reported (the ``run`` command)."""
    from experiments.cli import main

    out = tmp_path_factory.mktemp("page-run")
    (out / "spec.toml").write_text(RUN_SPEC)
    assert main(["run", str(out / "spec.toml"), "--out", str(out / "res")]) == 0
    return out / "res"


def test_a_run_report_has_the_page_structure_and_every_plot(run_dir):
    text = (run_dir / "report.html").read_text()
    got = check_structure(text)
    pngs = sorted(p.name for p in run_dir.glob("*.png"))
    assert len(got.images) == len(pngs)  # every plot written is placed in its section
    md = (run_dir / "report.md").read_text()
    assert all(f"]({name})" in md for name in pngs)
    summary = text.index('id="summary"')
    assert summary < text.index('id="how-does-step-latency-grow-with-n"')
    # the raw per-point table is folded, the headline numbers are not
    assert "<details><summary>Every point (raw)" in text
    assert "none: p99 step latency" in text[summary:text.index("</section>", summary)]
