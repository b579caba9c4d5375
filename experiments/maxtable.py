"""The expected (or quantile) max of N per-collective delays, per jitter schedule.

This is the number one all-reduce over N ranks waits for: every rank must arrive, so the
collective starts after the slowest of N delays. Computed exactly from the order
statistics in ``jitter_models`` (no sampling), including stragglers and the scope of the
schedule (node-shared and global draws are fewer independent streams).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from importlib import resources
from typing import Any

from jitter_models import Schedule, expected_max, format_us, max_quantile, schedules_from_toml
from jitter_models.files import read_input_file

STATS = {"mean": None, "p50": 0.5, "p90": 0.9, "p99": 0.99, "p999": 0.999}
DEFAULT_NS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


# A spec file is a regular file of at most this many bytes (a hand-written spec is a few KiB).
MAX_SPEC_BYTES = 4 * 2**20


def load_toml(text: str, where: str) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{where}: not valid TOML: {exc}") from None
    except RecursionError:  # the parser recurses per level of nested arrays and tables
        raise ValueError(f"{where}: not valid TOML: arrays or tables nested too deeply"
                         ) from None


def load_toml_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The TOML document in the user-named file ``path`` (a regular file, at most
    ``MAX_SPEC_BYTES``); ValueError naming ``spec`` and the file otherwise."""
    try:
        text = read_input_file(path, what=f"spec {str(path)!r}", max_bytes=MAX_SPEC_BYTES)
    except OSError as exc:
        raise ValueError(f"spec: cannot read {str(path)!r} ({exc.strerror or exc})") from None
    return load_toml(text, f"spec {str(path)!r}")


def preset_names() -> list[str]:
    files = resources.files("experiments.presets").iterdir()
    return sorted(f.name[:-5] for f in files if f.name.endswith(".toml"))


def load_preset(name: str) -> dict[str, Any]:
    if name not in preset_names():
        raise ValueError(f"preset: unknown preset {name!r} (known: {', '.join(preset_names())})")
    text = resources.files("experiments.presets").joinpath(f"{name}.toml").read_text("utf-8")
    return load_toml(text, f"preset {name!r}")


def max_table(schedules: Sequence[Schedule], ns: Sequence[int], stat: str = "mean", *,
              seed: int = 0, ranks_per_node: int = 8) -> list[dict[str, Any]]:
    """One row per (schedule, N): the statistic of the max over ranks of one site's delays,
    in µs, and its amplification over N = 1 (same statistic)."""
    if stat not in STATS:
        raise ValueError(f"stat: must be one of {', '.join(STATS)}, got {stat!r}")
    rows = []
    for s in schedules:
        base = None
        for n in ns:
            groups = s.site_groups(seed, n, ranks_per_node)
            q = STATS[stat]
            value = expected_max(groups) if q is None else float(max_quantile(groups, q))
            base = value if base is None else base
            amp = value / base if base and math.isfinite(value) else math.nan
            rows.append({"schedule": s.name, "n": n, "stat": stat, "value_us": value * 1e6,
                         "amplification": amp})
    return rows


def render_table(rows: list[dict[str, Any]], names: Sequence[str], means_s: Sequence[float]
                 ) -> str:
    """Rows of N, a column per schedule; the first line is each schedule's mean delay."""
    stat = rows[0]["stat"] if rows else "mean"
    width = [max(12, len(n) + 2) for n in names]
    head = "N".rjust(8) + "".join(n.rjust(w) for n, w in zip(names, width))
    lines = [f"{'E[max]' if stat == 'mean' else stat + ' of max'} of N per-rank delays, "
             f"microseconds (µs): what one collective over N ranks waits for", head,
             "mean".rjust(8) + "".join(format_us(m).rjust(w) for m, w in zip(means_s, width))]

    by_n: dict[int, dict[str, float]] = {}
    for r in rows:
        by_n.setdefault(r["n"], {})[r["schedule"]] = r["value_us"]
    for n, vals in by_n.items():
        cells = "".join(format_us(vals[nm] / 1e6).rjust(w) for nm, w in zip(names, width))
        lines.append(str(n).rjust(8) + cells)
    return "\n".join(lines)


def schedules_from_doc(doc: dict[str, Any]) -> list[Schedule]:
    return schedules_from_toml(doc)
