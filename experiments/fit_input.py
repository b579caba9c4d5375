"""The samples ``jitterlab fit`` reads, from three kinds of input:

- a text file in the ``empirical`` format: a header line ``latency_us`` or ``latency_ns``,
  then one sample per line (``#`` comments and blank lines skipped);
- a Parquet records file (a rank's ``rank-NNNNN.parquet``);
- a ``jitterlab bench`` run directory, a ``jitterlab run`` point directory
  (``points/<id>``), or a run folder with one point.

From records, ``what`` picks the column:

- ``iteration`` (the default): the per-iteration time, as ``bench`` reports it: per (step,
  site) the max over the ranks of t_done - t_start (a records file: its rank's own
  t_done - t_start). It includes the collective's floor; the shifted families fit it.
- ``delay``: the achieved injected delays (``delay_ns``) of every rank and site, pooled.

Records of several collectives or sizes (a bench over sizes) are refused unless ``size``
names one (bytes). Every sample is checked (``fit.check_samples``): an empty input,
non-positive or non-finite samples (how many, and the first lines or rows) and too few
samples are bad input, one line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jitter_models.errors import BadInput
from jitter_models.files import excerpt
from jitter_models.fit import check_samples

WHAT = ("iteration", "delay")
_UNITS = {"latency_us": 1e-6, "latency_ns": 1e-9}
_MAX_TEXT_BYTES = 256 * 2**20


def load(path: str, what: str = "iteration", size: int | None = None
         ) -> tuple[np.ndarray, str]:
    """(samples in seconds, a sentence saying what they are) from ``path``."""
    if what not in WHAT:
        raise BadInput(f"--what: expected one of {', '.join(WHAT)}, got {what!r}")
    p = Path(path)
    if not p.exists():
        raise BadInput(f"samples: {path!r} does not exist")
    if p.is_dir():
        files = _rank_files(p)
        return _from_records(files, what, size, str(p))
    if p.suffix == ".parquet":
        return _from_records([p], what, size, str(p))
    return _from_text(p)


def _from_text(p: Path) -> tuple[np.ndarray, str]:
    where = f"samples {str(p)!r}"
    if p.stat().st_size > _MAX_TEXT_BYTES:
        raise BadInput(f"{where}: larger than {_MAX_TEXT_BYTES >> 20} MiB")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{where}: cannot read it as text ({exc})") from None
    scale, values, lines = None, [], []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if scale is None:
            if line not in _UNITS:
                raise BadInput(f"{where}: line {lineno}: the header must be latency_us or "
                               f"latency_ns (the empirical format), got {excerpt(line)}")
            scale = _UNITS[line]
            continue
        try:
            values.append(float(line) * scale)
        except ValueError:
            raise BadInput(f"{where}: line {lineno}: not a number: {excerpt(line)}") from None
        lines.append(lineno)
    if scale is None or not values:
        raise BadInput(f"{where}: no samples (an empty file, or a header alone)")
    x = np.array(values, dtype=np.float64)
    check_samples(x, where, lines, "line")
    unit = "µs" if scale == 1e-6 else "ns"
    return x, f"{x.size} samples from {p.name} (latency in {unit})"


def _rank_files(d: Path) -> list[Path]:
    files = sorted(d.glob("rank-*.parquet"))
    if files:
        return files
    points = d / "points"
    if points.is_dir():
        inside = sorted(q for q in points.iterdir() if q.is_dir() and not q.name.startswith("."))
        if len(inside) == 1:
            return _rank_files(inside[0])
        if inside:
            raise BadInput(f"samples: {str(d)!r} holds {len(inside)} points; name one "
                           f"(e.g. {str(inside[0])!r})")
    raise BadInput(f"samples: {str(d)!r} holds no rank-*.parquet records (a bench run "
                   "directory, a run's point directory, or a run folder with one point)")


def _from_records(files: list[Path], what: str, size: int | None, where: str
                  ) -> tuple[np.ndarray, str]:
    from collectives.timing import STEP_SITE, read_rank_file

    tables = []
    for f in files:
        try:
            tables.append(read_rank_file(f)[0])
        except (OSError, ValueError) as exc:
            raise BadInput(f"samples: {str(f)!r}: not a records file ({exc})") from None
    rows = [t["site"] != STEP_SITE for t in tables]  # the step rows are not collectives
    cases = sorted({(int(o), int(b)) for t, m in zip(tables, rows)
                    for o, b in zip(t["op"][m], t["bytes"][m])})
    if size is not None:
        cases = [c for c in cases if c[1] == size]
        if not cases:
            raise BadInput(f"--size: no collective of {size} bytes in {where!r}")
    if len({b for _, b in cases}) > 1 or len(cases) > 1:
        sizes = ", ".join(str(b) for b in sorted({b for _, b in cases}))
        raise BadInput(f"samples: {where!r} has several collectives or sizes ({sizes} "
                       "bytes); choose one with --size (one collective a run)")
    if not cases:
        raise BadInput(f"samples: {where!r} holds no collective records")
    (op, nbytes), = cases
    picks = [m & (t["op"] == op) & (t["bytes"] == nbytes) for t, m in zip(tables, rows)]
    if what == "delay":
        x = np.concatenate([t["delay_ns"][m] for t, m in zip(tables, picks)]) * 1e-9
        said = (f"{x.size} achieved injected delays (delay_ns) of {len(tables)} rank(s), "
                f"{nbytes}-byte collective")
    else:
        per = []
        for t, m in zip(tables, picks):
            order = np.lexsort((t["site"][m], t["step"][m]))
            per.append((t["t_done_ns"][m] - t["t_start_ns"][m])[order])
        if len({a.size for a in per}) != 1:
            raise BadInput(f"samples: {where!r}: the ranks' records disagree on their "
                           "iterations")
        x = np.max(per, axis=0) * 1e-9
        said = (f"{x.size} per-iteration times (max over {len(tables)} rank(s) of t_done - "
                f"t_start) of the {nbytes}-byte collective")
    check_samples(x, f"samples {where!r} ({what})", unit="row")
    return x.astype(np.float64), said + f" from {where}"
