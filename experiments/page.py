"""A report as a document: a page of a summary and sections (paragraphs, tables, figures,
notes) rendered twice from the same blocks, as a self-contained ``report.html`` (inline
CSS, plots as base64 PNG, no remote asset, readable from phone width to 1280 px) and as
``report.md`` (pipe tables, figures as links to the PNG files written beside it). Every
report (``run``, ``simulate``) builds a ``Page`` so the two files cannot drift apart.

The colour of a schedule is fixed per page by a ``Palette`` that every plot asks."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from jitter_models.syntax import escape

# matplotlib's tab10 then the light halves of tab20: distinct hues first
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896",
            "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5")

# a column key's unit suffix (STYLE.md: units in names) and the unit a header spells out
_UNITS = (("_gbps", "GB/s"), ("_bytes", "bytes"), ("_us", "µs"), ("_ms", "ms"),
          ("_ns", "ns"), ("_s", "s"))


class Palette:
    """One colour per schedule name across every plot of a page: colours are handed out
    in the order names are first asked for (or given here, e.g. the spec's schedules), so
    a schedule is the same colour in the latency, efficiency, CDF and model plots. Past 20
    names colours repeat."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        self._of: dict[str, str] = {}
        for name in names:
            self.colour(name)

    def colour(self, name: str) -> str:
        """The colour (``#rrggbb``) of schedule ``name`` on this page."""
        if name not in self._of:
            self._of[name] = _COLOURS[len(self._of) % len(_COLOURS)]
        return self._of[name]


def header(key: str) -> str:
    """A column key as a header with its unit spelled out: ``p99_us`` -> ``p99 (µs)``;
    a key without a unit suffix is its own header (``world_size``)."""
    for suffix, unit in _UNITS:
        if key.endswith(suffix) and len(key) > len(suffix):
            return f"{key[: -len(suffix)]} ({unit})"
    return key


@dataclass(frozen=True)
class Column:
    """One column of a table: the row key it reads and its header text."""

    key: str
    """The row dict's key (the CSV column name)."""
    label: str = ""
    """The header; empty: ``header(key)``."""

    @property
    def title(self) -> str:
        return self.label or header(self.key)


@dataclass(frozen=True)
class Paragraph:
    """Running text; ``lead`` is set in bold before it (a warning's first words)."""

    text: str
    lead: str = ""


@dataclass(frozen=True)
class Note:
    """An aside the reader should not miss: what a figure leaves out, a caveat."""

    text: str


@dataclass(frozen=True)
class Bullets:
    """A list of short items."""

    items: tuple[str, ...]


@dataclass(frozen=True)
class Definitions:
    """Terms and what they mean (the report's metric definitions)."""

    items: tuple[tuple[str, str], ...]


def _is_number(v: Any) -> bool:
    if isinstance(v, (list, tuple)):
        return all(x is None or _is_number(x) for x in v)
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class Table:
    """Rows (dicts) under a header row; number columns are right-aligned. ``collapsible``
    folds a long raw table under its title (``<details>``) so it does not bury the
    figures."""

    title: str
    columns: tuple[Column, ...]
    rows: tuple[dict[str, Any], ...]
    fmt: Callable[[Any], str] = str
    """Turns one value into its cell text (the report's number format, n/a for None)."""
    collapsible: bool = False

    @classmethod
    def of(cls, title: str, rows: Iterable[dict[str, Any]], keys: Sequence[str | Column],
           fmt: Callable[[Any], str] = str, *, collapsible: bool = False) -> Table:
        """A table of ``rows`` showing ``keys`` (names or ``Column``s) in that order."""
        cols = tuple(k if isinstance(k, Column) else Column(k) for k in keys)
        return cls(title, cols, tuple(rows), fmt, collapsible)

    def numeric(self, col: Column) -> bool:
        """Whether a column holds numbers only (None aside): right-aligned."""
        values = [r.get(col.key) for r in self.rows if r.get(col.key) is not None]
        return bool(values) and all(_is_number(v) for v in values)

    def cells(self) -> list[list[str]]:
        return [[self.fmt(r.get(c.key)) for c in self.columns] for r in self.rows]


@dataclass(frozen=True)
class Figure:
    """A plot: PNG bytes, the file name it is written under beside report.md, the
    alternative text (what it shows) and the caption (what to read from it)."""

    name: str
    png: bytes
    alt: str
    caption: str


@dataclass(frozen=True)
class Gallery:
    """Small figures of one kind side by side (one per schedule), each with a short
    caption, under one caption that says what to read from all of them."""

    figures: tuple[Figure, ...]
    caption: str


Block = Union[Paragraph, Note, Bullets, Definitions, Table, Figure, Gallery, "Section"]


@dataclass(frozen=True)
class Section:
    """A part of the page that answers one question: a title, an intro, its blocks (a
    nested ``Section`` is a subsection)."""

    title: str
    intro: str = ""
    blocks: tuple[Block, ...] = ()


@dataclass(frozen=True)
class Summary:
    """The top of the page: key facts (label, value) and the headline sentences."""

    facts: tuple[tuple[str, str], ...] = ()
    headlines: tuple[str, ...] = ()


@dataclass(frozen=True)
class Page:
    """A whole report."""

    title: str
    meta: str
    """One paragraph under the title: what was run, on what."""
    summary: Summary
    sections: tuple[Section, ...] = field(default_factory=tuple)

    def figures(self) -> list[Figure]:
        """Every figure of the page, in order."""
        out: list[Figure] = []
        for b in (b for s in self.sections for b in _walk(s)):
            out += [b] if isinstance(b, Figure) else list(getattr(b, "figures", ()))
        return out


def _walk(section: Section) -> Iterable[Block]:
    for b in section.blocks:
        yield b
        if isinstance(b, Section):
            yield from _walk(b)


def anchor(title: str) -> str:
    """An HTML id from a title: lowercase words joined by hyphens."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"


# --- HTML -----------------------------------------------------------------------------

CSS = """
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
 color:#1b1b1b;background:#fff}
main{max-width:64rem;margin:0 auto;padding:1rem}
h1{font-size:1.6rem;margin:.5rem 0}
h2{font-size:1.3rem;margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
h3{font-size:1.1rem;margin-top:1.6rem}
.meta{color:#555}
.summary{background:#f4f7fb;border:1px solid #d5dfeb;border-radius:6px;padding:.6rem 1rem}
.summary h2{margin-top:.2rem}
.summary dl{display:grid;grid-template-columns:max-content 1fr;gap:.1rem 1rem;margin:.4rem 0}
.summary dt{font-weight:600}.summary dd{margin:0}
.summary ul{padding-left:1.2rem;margin:.4rem 0}
nav ol{padding-left:1.4rem;margin:.3rem 0}
.scroll{overflow-x:auto;margin:.6rem 0;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;font-size:.85rem}
caption{text-align:left;font-weight:600;padding:.2rem 0}
th,td{padding:.25rem .55rem;border-bottom:1px solid #e3e3e3;white-space:nowrap}
th{background:#f2f2f2;text-align:left;vertical-align:bottom}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.wrap{white-space:normal;min-width:12rem;max-width:26rem}
details{margin:.8rem 0}summary{cursor:pointer;font-weight:600}
figure{margin:1.2rem 0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(22rem,1fr));gap:.8rem}
.grid figure{margin:0}
figure img{display:block;max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9rem;color:#444;margin-top:.3rem;max-width:46rem}
.note{border-left:4px solid #e0a800;background:#fff8e1;padding:.4rem .8rem}
dl.defs dt{font-weight:600}dl.defs dd{margin:0 0 .5rem 1rem}
@media (max-width:600px){body{font-size:15px}main{padding:.6rem}h1{font-size:1.3rem}
 .summary dl{grid-template-columns:1fr}.summary dd{margin-bottom:.3rem}}
"""


def _h(text: str) -> str:
    """Text safe inside HTML: control characters written as escapes, markup escaped."""
    return html.escape(escape(text))


def to_html(page: Page) -> str:
    """The page as one self-contained HTML document."""
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{_h(page.title)}</title><style>{CSS}</style></head><body><main>",
             f"<h1>{_h(page.title)}</h1>", f'<p class="meta">{_h(page.meta)}</p>',
             _html_summary(page)]
    parts += [_html_section(s, 2) for s in page.sections]
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def _html_summary(page: Page) -> str:
    s = page.summary
    out = ['<section class="summary" id="summary"><h2>Summary</h2>']
    if s.facts:
        out.append("<dl>" + "".join(f"<dt>{_h(k)}</dt><dd>{_h(v)}</dd>" for k, v in s.facts)
                   + "</dl>")
    if s.headlines:
        out.append("<ul>" + "".join(f"<li>{_h(h)}</li>" for h in s.headlines) + "</ul>")
    out.append("<nav><strong>Sections</strong><ol>" + "".join(
        f'<li><a href="#{anchor(x.title)}">{_h(x.title)}</a></li>' for x in page.sections)
        + "</ol></nav></section>")
    return "".join(out)


def _html_section(s: Section, level: int) -> str:
    out = [f'<section id="{anchor(s.title)}"><h{level}>{_h(s.title)}</h{level}>']
    if s.intro:
        out.append(f"<p>{_h(s.intro)}</p>")
    out += [_html_block(b, level) for b in s.blocks]
    return "".join(out) + "</section>"


def _html_block(b: Block, level: int) -> str:
    if isinstance(b, Section):
        return _html_section(b, min(level + 1, 6))
    if isinstance(b, Paragraph):
        lead = f"<strong>{_h(b.lead)}</strong> " if b.lead else ""
        return f"<p>{lead}{_h(b.text)}</p>"
    if isinstance(b, Note):
        return f'<p class="note">{_h(b.text)}</p>'
    if isinstance(b, Bullets):
        return "<ul>" + "".join(f"<li>{_h(x)}</li>" for x in b.items) + "</ul>"
    if isinstance(b, Definitions):
        return '<dl class="defs">' + "".join(f"<dt>{_h(k)}</dt><dd>{_h(v)}</dd>"
                                             for k, v in b.items) + "</dl>"
    if isinstance(b, Figure):
        data = base64.b64encode(b.png).decode()
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{_h(b.alt)}">'
                f"<figcaption>{_h(b.caption)}</figcaption></figure>")
    if isinstance(b, Gallery):
        return ('<figure class="gallery"><div class="grid">'
                + "".join(_html_block(f, level) for f in b.figures)
                + f"</div><figcaption>{_h(b.caption)}</figcaption></figure>")
    return _html_table(b)


WRAP_AT = 40  # characters: a text cell longer than this wraps


def _html_table(t: Table) -> str:
    num = [t.numeric(c) for c in t.columns]
    rows = t.cells()
    # a text column with long cells (a law's description) wraps, so that the columns after
    # it stay on a 1280 px screen; numbers and short text keep to one line
    wrap = [not num[i] and any(len(str(r[i])) > WRAP_AT for r in rows)
            for i in range(len(t.columns))]

    def cls(i: int) -> str:
        return ' class="num"' if num[i] else ' class="wrap"' if wrap[i] else ""

    head = "".join(f'<th scope="col"{cls(i)}>{_h(c.title)}</th>'
                   for i, c in enumerate(t.columns))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{_h(v)}</td>" for i, v in enumerate(row))
                   + "</tr>" for row in rows)
    caption = "" if t.collapsible else f"<caption>{_h(t.title)}</caption>"
    table = (f'<div class="scroll"><table>{caption}<thead><tr>{head}</tr></thead>'
             f"<tbody>{body}</tbody></table></div>")
    if t.collapsible:
        return (f"<details><summary>{_h(t.title)} ({len(t.rows)} rows)</summary>{table}"
                "</details>")
    return table


# --- Markdown -------------------------------------------------------------------------


def _m(text: str) -> str:
    return escape(text)


def to_markdown(page: Page) -> str:
    """The page as Markdown: the same sections, tables and captions; figures link to
    their PNG files (``Figure.name``) beside report.md."""
    lines = [f"# {_m(page.title)}", "", _m(page.meta), "", "## Summary", ""]
    lines += [f"- **{_m(k)}**: {_m(v)}" for k, v in page.summary.facts]
    if page.summary.facts and page.summary.headlines:
        lines.append("")
    lines += [f"- {_m(h)}" for h in page.summary.headlines]
    for s in page.sections:
        lines += _md_section(s, 2)
    return "\n".join(lines) + "\n"


def _md_section(s: Section, level: int) -> list[str]:
    lines = ["", f"{'#' * level} {_m(s.title)}", ""]
    if s.intro:
        lines += [_m(s.intro), ""]
    for b in s.blocks:
        lines += _md_block(b, level)
    return lines


def _md_block(b: Block, level: int) -> list[str]:
    if isinstance(b, Section):
        return _md_section(b, min(level + 1, 6))
    if isinstance(b, Paragraph):
        return [(f"**{_m(b.lead)}** " if b.lead else "") + _m(b.text), ""]
    if isinstance(b, Note):
        return [f"> {_m(b.text)}", ""]
    if isinstance(b, Bullets):
        return [f"- {_m(x)}" for x in b.items] + [""]
    if isinstance(b, Definitions):
        return [f"- **{_m(k)}**: {_m(v)}" for k, v in b.items] + [""]
    if isinstance(b, Figure):
        return [f"![{_m(b.alt)}]({b.name})", "", f"*Figure.* {_m(b.caption)}", ""]
    if isinstance(b, Gallery):
        return [x for f in b.figures for x in _md_block(f, level)] + [
            f"*Figures above.* {_m(b.caption)}", ""]
    return _md_table(b)


def _md_table(t: Table) -> list[str]:
    def cell(text: str) -> str:
        return _m(text).replace("|", "\\|")

    rule = "|" + "".join("---:|" if t.numeric(c) else "---|" for c in t.columns)
    lines = [f"**{_m(t.title)}**", "", "| " + " | ".join(cell(c.title) for c in t.columns)
             + " |", rule]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in t.cells()]
    return lines + [""]
