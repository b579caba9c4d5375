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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jitter_models import Schedule

# (jitter_models is imported where it is used: the CLI's parser reads STATS, and --help
# must not import scipy.)
STATS = {"mean": None, "p50": 0.5, "p90": 0.9, "p99": 0.99, "p999": 0.999}
"""The statistics of the max a table can give: its mean, or a quantile."""
DEFAULT_NS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


# A spec file is a regular file of at most this many bytes (a hand-written spec is a few KiB).
MAX_SPEC_BYTES = 4 * 2**20


def load_toml(text: str, where: str) -> dict[str, Any]:
    from jitter_models.errors import BadInput

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"{where}: not valid TOML: {exc}") from None
    except RecursionError:  # the parser recurses per level of nested arrays and tables
        raise BadInput(f"{where}: not valid TOML: arrays or tables nested too deeply"
                         ) from None


def load_toml_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The TOML document in the user-named file ``path`` (a regular file, at most
    ``MAX_SPEC_BYTES``); BadInput naming ``spec`` and the file otherwise."""
    from jitter_models.errors import BadInput
    from jitter_models.files import read_input_file

    try:
        text = read_input_file(path, what=f"spec {str(path)!r}", max_bytes=MAX_SPEC_BYTES)
    except OSError as exc:
        raise BadInput(f"spec: cannot read {str(path)!r} ({exc.strerror or exc})") from None
    return load_toml(text, f"spec {str(path)!r}")


def preset_names() -> list[str]:
    files = resources.files("experiments.presets").iterdir()
    return sorted(f.name[:-5] for f in files if f.name.endswith(".toml"))


def load_preset(name: str) -> dict[str, Any]:
    from jitter_models.errors import BadInput

    if name not in preset_names():
        raise BadInput(f"preset: unknown preset {name!r} (known: {', '.join(preset_names())})")
    text = resources.files("experiments.presets").joinpath(f"{name}.toml").read_text("utf-8")
    return load_toml(text, f"preset {name!r}")


def max_table(schedules: Sequence[Schedule], ns: Sequence[int], stat: str = "mean", *,
              seed: int = 0, ranks_per_node: int = 8) -> list[dict[str, Any]]:
    """One row per (schedule, N): the statistic of the max over ranks of one site's delays,
    in µs, and its amplification over N = 1 (same statistic)."""
    from jitter_models import expected_max, max_quantile
    from jitter_models.errors import BadInput

    if stat not in STATS:
        raise BadInput(f"stat: must be one of {', '.join(STATS)}, got {stat!r}")
    for i, s in enumerate(schedules):
        if s.scope == "link":
            raise BadInput(f"jitter[{i}].scope: 'link' delays an explicit algorithm's "
                           "messages, not ranks before a collective: the max over ranks "
                           "of one collective's delays (this table) does not apply; the "
                           "simulator of the algorithms' patterns times those")
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
    from jitter_models import format_us

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

