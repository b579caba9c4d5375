"""The report's site-max plot and points.csv: the achieved injected delay (what the
injector did), not the requested one, against the order-statistics prediction."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments import report
from experiments.analysis import measured_site_max_us
from experiments.store import _check_tables

sys.path.insert(0, str(Path(__file__).parent))
from test_analysis import US, make_tables  # noqa: E402


def _summary(site_max_us: dict) -> dict:
    lat = {"n": 4, "p50_us": 100.0, "p99_us": 120.0, "p99_ci_us": [None, None],
           "mean_us": 101.0}
    return {"point": "p1", "schedule": "late", "world_size": 2, "batch": 1,
            "step_latency": lat, "decomposition_us": {"compute_us": 1.0, "delay_us": 2.0,
                                                      "collective_us": 3.0},
            "site_max_us": site_max_us, "hosts": ["h"]}


def test_a_late_injector_shows_in_the_plot_data_and_the_csv():
    requested = np.array([[[10, 50], [20, 0]], [[40, 30], [0, 60]]]) * US  # [rank, step, site]
    tables = make_tables(1 * US, requested + 300 * US, 1 * US, delay_req_ns=requested)
    summary = _summary(measured_site_max_us(tables))
    _check_tables(summary, Path("summary.json"))  # the store's schema accepts it
    want_requested = (40 + 50 + 20 + 60) / 4
    row = report.point_row(summary, predicted_site_max_us=want_requested)
    assert row["site_max_requested_us"] == pytest.approx(want_requested)
    assert row["site_max_achieved_us"] == pytest.approx(want_requested + 300)
    # the plot shows the 300 us lateness against the prediction, not requested vs itself
    xs, ys = report.site_max_pairs([row])
    assert xs == [want_requested] and ys == [pytest.approx(want_requested + 300)]
    (got,) = csv.DictReader(io.StringIO(report._csv([row])))
    assert float(got["site_max_achieved_us"]) - float(got["site_max_requested_us"]) \
        == pytest.approx(300.0)


def test_an_older_summary_without_the_achieved_delay_is_na_not_a_failure():
    summary = _summary({"requested_us": 50.0})
    _check_tables(summary, Path("summary.json"))
    row = report.point_row(summary, predicted_site_max_us=50.0)
    assert row["site_max_achieved_us"] is None
    assert report.site_max_pairs([row]) == ([], [])
    caption = report._site_max_caption([row])
    assert "1 point(s) without an achieved value (an older summary) are n/a" in caption
    assert "max over ranks of the achieved delay delay_ns (µs)" in caption
