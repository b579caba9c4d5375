"""Injector fidelity as the caller sees it (collectives/calibrate.py).

The host injector spins until ``t_start + delay`` on the clock the caller reads next, so
it is never early: every achieved delay is >= the requested one, hence ``mean_err_us >=
0`` exactly. How late it is depends on the machine: the median bound here (20 µs) is
loose on purpose, because CI runs on a shared 2-core machine where a spinning process can
be descheduled for a time slice; ``benchmarks/bench_inject.py`` holds the tight targets
(median <= 1 µs, p99 <= 20 µs) for an idle machine. Bound and sign together fail for the
"none" injector at every constant, which is the negative control.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from collectives.calibrate import calibrate, render
from collectives.inject import HostInjector, NoInjector

SAMPLES = 200  # about 0.25 s of injected delay per injector
CONSTANTS_US = (1, 10, 100, 1000)
KEYS = {"requested_us", "dist", "samples", "median_abs_err_us", "p99_abs_err_us",
        "mean_err_us", "ks"}
MEDIAN_BOUND_US = 20.0
KS_BOUND = 0.1


def meets_bound(row: dict) -> bool:
    return row["median_abs_err_us"] <= MEDIAN_BOUND_US and row["mean_err_us"] >= 0


@pytest.fixture(scope="module")
def host_rows() -> list[dict]:
    return calibrate(HostInjector(), constants_us=CONSTANTS_US, samples=SAMPLES, seed=0)


@pytest.fixture(scope="module")
def none_rows() -> list[dict]:
    return calibrate("none", constants_us=CONSTANTS_US, samples=SAMPLES, seed=0)


def test_rows_have_the_required_keys_and_types(host_rows: list[dict]) -> None:
    assert len(host_rows) == len(CONSTANTS_US) + 1
    for row, c in zip(host_rows, CONSTANTS_US):
        assert set(row) == KEYS
        assert row["requested_us"] == c and isinstance(row["requested_us"], float)
        assert row["dist"] == f"constant({c}us)"
        assert row["ks"] is None
    rnd = host_rows[-1]
    assert set(rnd) == KEYS
    assert rnd["requested_us"] is None
    assert rnd["dist"] == "lognormal(median=50us, sigma=0.8)"
    assert isinstance(rnd["ks"], float) and 0 <= rnd["ks"] <= 1
    for row in host_rows:
        assert row["samples"] == SAMPLES and isinstance(row["samples"], int)
        for k in ("median_abs_err_us", "p99_abs_err_us", "mean_err_us"):
            assert isinstance(row[k], float)
        assert 0 <= row["median_abs_err_us"] <= row["p99_abs_err_us"]
    assert json.loads(json.dumps(host_rows)) == host_rows  # the CLI writes them as JSON


def test_host_injector_is_close_and_never_early(host_rows: list[dict]) -> None:
    for row in host_rows[:-1]:
        assert meets_bound(row), row


def test_host_injector_reproduces_the_random_distribution(host_rows: list[dict]) -> None:
    # Achieved = requested + a small lateness, so the two empirical CDFs nearly coincide;
    # a shift of 1 µs moves this lognormal's CDF by at most ~0.014.
    assert host_rows[-1]["ks"] < KS_BOUND
    assert host_rows[-1]["mean_err_us"] >= 0


def test_no_injector_misses_by_the_requested_delay(none_rows: list[dict]) -> None:
    # Negative control: with no wait, the achieved delay is the cost of one call and a
    # clock read (well under 1 µs), so each error is the requested delay, and the bound
    # the host injector meets fails at every constant.
    for row, c in zip(none_rows, CONSTANTS_US):
        assert row["median_abs_err_us"] == pytest.approx(c, abs=1.0)
        assert row["mean_err_us"] == pytest.approx(-c, abs=1.0)
        assert not meets_bound(row), row
    assert none_rows[-1]["ks"] > 0.9


def test_same_seed_same_requested_random_delays() -> None:
    # The "none" injector's error is minus the requested delay (plus a call's cost), so
    # equal seeds must give nearly equal rows and different seeds different ones.
    # The other seed: the one of 2..40 whose 100 requested draws' mean is farthest from
    # seed 1's (computed here from the same law), so that "different" is not left to
    # chance: two seeds' means can be closer than the call cost's noise (~0.2 us).
    import jitter_models
    from collectives.calibrate import DEFAULT_RANDOM

    def requested_mean_us(seed: int) -> float:
        law = jitter_models.parse(DEFAULT_RANDOM)
        return float(np.mean(law.sample(np.random.default_rng(seed), 100))) * 1e6

    other = max(range(2, 41), key=lambda s: abs(requested_mean_us(s) - requested_mean_us(1)))
    shift = requested_mean_us(other) - requested_mean_us(1)
    assert abs(shift) > 2.0
    a = calibrate(NoInjector(), constants_us=(), samples=100, seed=1)[0]
    b = calibrate(NoInjector(), constants_us=(), samples=100, seed=1)[0]
    c = calibrate(NoInjector(), constants_us=(), samples=100, seed=other)[0]
    assert a["mean_err_us"] == pytest.approx(b["mean_err_us"], abs=0.5)
    # the error is minus the requested delay: it moves by minus the requested shift
    assert c["mean_err_us"] - a["mean_err_us"] == pytest.approx(-shift, abs=0.5)


def test_render_shows_every_row(host_rows: list[dict]) -> None:
    text = render(host_rows)
    lines = text.splitlines()
    assert lines[0].split() == ["requested_us", "dist", "median_abs_err_us", "p99_abs_err_us",
                                "mean_err_us", "ks"]
    assert len(lines) == len(host_rows) + 1
    for row, line in zip(host_rows, lines[1:]):
        assert row["dist"] in line
    assert "n/a" in lines[1] and f"{host_rows[-1]['ks']:.4f}" in lines[-1]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"samples": 0}, "samples: must be an integer >= 1, got 0"),
    ({"constants_us": (-1,)}, "constants_us: each must be a finite number >= 0, got -1"),
])
def test_bad_arguments_name_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        calibrate("none", **kwargs)


def test_unknown_injector_is_rejected() -> None:
    with pytest.raises(ValueError, match="injector: unknown 'spin'"):
        calibrate("spin")
