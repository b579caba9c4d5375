"""CSV tables that a spreadsheet opens without evaluating anything in them.

A text cell that begins with ``=``, ``+``, ``-`` or ``@`` (or a tab or carriage return) is
a formula to Excel, LibreOffice and Google Sheets: a schedule named ``=HYPERLINK(...)``
would run. Such text cells get a leading ``'`` (the OWASP rule), which the spreadsheet
shows as text. Numbers are written as numbers: a negative number stays ``-0.5``, it is
not text and no spreadsheet evaluates it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """``value``, with a ``'`` in front if it is text a spreadsheet would evaluate."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_text(rows: Iterable[Mapping[str, Any]], fieldnames: Sequence[str]) -> str:
    """The rows as CSV text under a header of ``fieldnames`` (keys not in it dropped),
    every text cell through :func:`safe_cell`."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fieldnames), extrasaction="ignore")
    w.writeheader()
    w.writerows({k: safe_cell(v) for k, v in r.items()} for r in rows)
    return buf.getvalue()
