"""Detours (time-axis noise): ``Detours.end`` against a brute-force reference, the phases,
the parser and its errors, and detours inside a schedule (text, table, input files)."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from scipy import stats

from jitter_models import (
    Constant,
    Detours,
    Periodic,
    Trace,
    input_files,
    parse_detours,
    parse_schedule,
    schedule_from_table,
)
from jitter_models.errors import BadInput
from jitter_models.schedule import Schedule

# One tick is 2**-9 s = 1953125 ns: every time below is an integer number of ticks, so it
# is exact both as a float in seconds and as integer nanoseconds in a trace file, and the
# brute force and Detours.end can be compared with ==.
TICK_S = 2.0 ** -9
TICK_NS = 1_953_125


def brute_end(busy: np.ndarray, t: int, work: int, offset: int) -> int:
    """The semantics, tick by tick: ``busy[p]`` says whether position ``p`` of the
    pattern is inside a detour. Work advances only on free ticks; zero work still waits
    for the detour it starts in; work that is done stops before the next busy tick."""
    period, now = len(busy), t
    if work == 0:
        while busy[(now + offset) % period]:
            now += 1
        return now
    done = 0
    while done < work:
        done += not busy[(now + offset) % period]
        now += 1
    return now


def mask(period: int, detours: list[tuple[int, int]]) -> np.ndarray:
    out = np.zeros(period, dtype=bool)
    for start, duration in detours:
        out[start:start + duration] = True
    return out


# A trace in ticks, out of order: [0, 3) at the period's start; [10, 14), [12, 17) and
# [17, 19) overlap and touch (one detour [10, 19)); a zero-length line; [58, 64) ends the
# period, so it runs on into [0, 3) of the next.
TRACE_TICKS = [(40, 6), (12, 5), (0, 3), (10, 4), (30, 0), (58, 6), (17, 2)]
TRACE_PERIOD = 64


def write_trace(path, rows, comment=True) -> str:
    lines = ["# start_ns\tduration_ns", ""] if comment else []
    lines += [f"{s * TICK_NS}\t{d * TICK_NS}" for s, d in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def trace(tmp_path) -> Trace:
    return Trace(file=write_trace(tmp_path / "noise.tsv", TRACE_TICKS))


def cases(period: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random (t, work, offset) in ticks: many zero and short works (boundaries), some
    longer than several periods, some starts far from the origin."""
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 4 * period, n)
    t[: n // 10] += 10**6  # many cycles in: the cycle arithmetic
    work = np.where(rng.random(n) < 0.2, 0, rng.integers(1, 3 * period, n))
    work[n // 2:] = rng.integers(0, 4, n - n // 2)  # starts and ends near detour edges
    return t, work, rng.integers(0, period, n)


@pytest.mark.parametrize("which", ["periodic", "trace"])
def test_end_matches_the_brute_force_reference(which, trace):
    if which == "periodic":
        det, busy = Periodic(period=40 * TICK_S, duration=7 * TICK_S), mask(40, [(0, 7)])
    else:
        det, busy = trace, mask(TRACE_PERIOD, TRACE_TICKS)
    assert det.period_s == len(busy) * TICK_S
    t, work, offset = cases(len(busy), 3000, seed=7)
    got = det.end(t * TICK_S, work * TICK_S, offset * TICK_S)  # vectorized, one call
    want = np.array([brute_end(busy, *c) for c in zip(t, work, offset)]) * TICK_S
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, [(t[i], work[i], offset[i], got[i] / TICK_S, want[i] / TICK_S)
                           for i in bad[:5]]
    i = 17  # a scalar call gives the same as its element of the vectorized one
    assert float(det.end(t[i] * TICK_S, work[i] * TICK_S, offset[i] * TICK_S)) == got[i]


def test_edges_of_a_detour(trace):
    p = Periodic(period=40 * TICK_S, duration=7 * TICK_S)
    end = lambda d, t, w, o=0: float(d.end(t * TICK_S, w * TICK_S, o * TICK_S)) / TICK_S  # noqa: E731
    assert end(p, 3, 0) == 7  # inside a detour, no work: begins when it ends
    assert end(p, 7, 0) == 7  # at its end: not inside
    assert end(p, 6, 1) == 8
    assert end(p, 7, 33) == 40  # ends exactly at the next detour's start: ends there
    assert end(p, 7, 34) == 48
    assert end(p, 5, 0, o=35) == 12 and end(p, 5, 0, o=30) == 5  # the offset shifts it
    # The trace's last detour [58, 64) runs on into the next period's [0, 3).
    assert end(trace, 59, 0) == 67
    assert end(trace, 59, 1) == 68
    assert end(trace, 57, 1) == 58  # done at the last detour's start
    assert end(trace, 9, 2) == 20  # across the merged [10, 19)


def test_detours_of_zero_length_cost_nothing_and_broadcast():
    d = Periodic(period=1e-3, duration=0.0)
    out = d.end(0.25e-3, 1e-4, np.zeros(4))
    assert out.shape == (4,) and np.all(out == 0.25e-3 + 1e-4)
    assert d.busy_fraction == 0


def test_busy_fraction(trace):
    assert Periodic(period=10e-3, duration=250e-6).busy_fraction == pytest.approx(0.025)
    assert trace.busy_fraction == (3 + 9 + 6 + 6) / TRACE_PERIOD  # merged, not summed


@pytest.mark.parametrize("phase", ["random", "aligned"])
def test_long_run_fraction_of_wall_time_in_detours_is_busy_fraction(phase, trace):
    # A rank that always works is, at every instant, working or inside a detour, so over
    # [0, T] the detour time is exactly T - work. Any window of length L = n*period + r
    # holds between n*B and (n + 1)*B of detour time (B = detour time per period), so
    # |detour/T - busy_fraction| <= B/T, whatever the phase: a bound, not a statistic.
    rng = np.random.default_rng(3)
    for det in (Periodic(period=10e-3, duration=1.7e-3), trace):
        offsets = det.offsets(11, np.arange(16)) if phase == "random" else np.zeros(16)
        bound = det.busy_fraction * det.period_s
        work = 2000 * det.period_s
        t_end = det.end(0.0, work, offsets)  # one large piece of work per rank
        assert np.all(np.abs((t_end - work) / t_end - det.busy_fraction) <= bound / t_end)
        t, done = np.zeros(16), 0.0  # many small pieces, back to back
        for w in rng.exponential(det.period_s / 7, 5000):
            t, done = det.end(t, w, offsets), done + w
        assert np.all(np.abs((t - done) / t - det.busy_fraction) <= bound / t)


# --- phases -----------------------------------------------------------------------------


def test_aligned_phase_is_offset_zero_for_every_rank():
    d = Periodic(period=1e-3, duration=1e-4, phase="aligned")
    assert np.all(d.offsets(5, np.arange(1000)) == 0)


def test_offsets_are_uniform_in_the_period():
    d = Periodic(period=3e-3, duration=1e-4)
    x = d.offsets(2024, np.arange(4000))
    assert np.all((x >= 0) & (x < 3e-3))
    # KS against uniform(0, period); a correct implementation fails with probability 1e-3
    # over the choice of the seed (fixed here, so the outcome is deterministic).
    assert stats.kstest(x / 3e-3, "uniform").pvalue > 1e-3


def test_offsets_depend_on_seed_and_rank_only(trace):
    d = Periodic(period=1e-3, duration=1e-4)
    many = d.offsets(9, np.arange(64))
    assert d.offsets(9, [5])[0] == many[5]  # whatever other ranks are asked
    assert np.array_equal(d.offsets(9, [40, 5, 63]), many[[40, 5, 63]])
    assert np.array_equal(d.offsets(9, np.arange(64).reshape(8, 8)).ravel(), many)
    assert not np.any(d.offsets(10, np.arange(64)) == many)  # another seed, other phases
    # The same fraction of the period for every pattern: one stream per (seed, rank).
    assert np.allclose(trace.offsets(9, np.arange(64)) / trace.period_s, many / 1e-3)


# --- text: the parser, str, errors ------------------------------------------------------


@pytest.mark.parametrize("text, want", [
    ("periodic(period=10ms, duration=250us)", Periodic(period=10e-3, duration=250e-6)),
    ("periodic(10ms, 250us, phase=aligned)",
     Periodic(period=10e-3, duration=250e-6, phase="aligned")),
    ("periodic(period=10ms, duration=250us, phase=random)",
     Periodic(period=10e-3, duration=250e-6)),
])
def test_parse_periodic(text, want):
    assert parse_detours(text) == want
    assert parse_detours(str(want)) == want
    assert parse_detours(want) is want


@pytest.mark.parametrize("name", ["noise.tsv", "a b.tsv", "a;b.tsv", "it's (1).tsv",
                                  'say "hi".tsv', "x=y,z*.tsv"])
def test_trace_str_round_trips_any_path(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    write_trace(tmp_path / name, TRACE_TICKS)
    for d in (Trace(file=name), Trace(file=name, period=80 * TICK_S, phase="aligned")):
        assert parse_detours(str(d)) == d
        s = Schedule(dist=Constant(value_s=1e-6), detours=d)
        assert parse_schedule(str(s)) == s and schedule_from_table(s.to_table()) == s
    assert str(Trace(file=name, period=0.125)).endswith("period=125ms)")


def test_trace_with_a_longer_period_keeps_its_pattern(tmp_path):
    path = write_trace(tmp_path / "t.tsv", TRACE_TICKS)
    d = parse_detours(f"trace({path}, period={80 * TICK_NS}ns)")
    assert d.period_s == 80 * TICK_S
    assert float(d.end(59 * TICK_S, 0.0, 0.0)) == 64 * TICK_S  # no wrap: 64..80 is free
    assert d.busy_fraction == 24 / 80


def test_trace_period_defaults_to_the_latest_end_even_out_of_order(tmp_path):
    # The last line is not the latest end; a zero-length line may mark the length.
    d = Trace(file=write_trace(tmp_path / "t.tsv", [(0, 2), (50, 0), (10, 3)]))
    assert d.period_s == 50 * TICK_S


def one_line(message: str):
    """An exact, one-line BadInput."""
    assert "\n" not in message
    return pytest.raises(BadInput, match="^" + re.escape(message) + "$")


@pytest.mark.parametrize("text, message", [
    ("jitter(1ms)", "detours: unknown kind 'jitter' (known: periodic, trace)"),
    ("periodic(period=10ms)", "detours: periodic: missing duration"),
    ("periodic(period=1ms, duration=1ms)",
     "detours: duration: must be shorter than the period (1ms), got 1ms"),
    ("periodic(period=1ms, duration=2ms)",
     "detours: duration: must be shorter than the period (1ms), got 2ms"),
    ("periodic(period=0s, duration=0s)", "detours: period: must be > 0, got 0s"),
    ("periodic(period=2h, duration=1ms)",
     "detours: periodic: period: invalid duration '2h': unknown unit 'h' (use ns, us (or "
     "µs), ms or s)"),
    ("periodic(period=10, duration=1ms)",
     "detours: periodic: period: invalid duration '10': a bare number needs a unit (ns, "
     "us (or µs), ms or s)"),
    ("periodic(period=10ms, duration=1ms, phase=sometimes)",
     "detours: phase: must be one of random, aligned, got 'sometimes'"),
    ("periodic(period=10ms, duration=1ms, every=2)",
     "detours: periodic: unknown parameter 'every' (parameters: period, duration, phase)"),
    ("periodic(10ms, 1ms, random)",
     "detours: periodic: too many arguments (parameters: period, duration, phase)"),
    ("periodic(period=10ms, period=1ms, duration=1ms)", "detours: periodic: period given twice"),
    ("periodic(period=10ms, duration=constant(1ms))",
     "detours: periodic: duration: expected a value, got a call"),
    ("periodic(period=10ms", "detours: malformed spec 'periodic(period=10ms': column 21: "
     "expected ',' or ')', found end of text"),
    ("trace()", "detours: trace: missing file"),
])
def test_parse_errors(text, message):
    with one_line(message):
        parse_detours(text)


def test_parse_needs_text():
    with one_line("detours: expected text such as 'periodic(period=10ms, duration=250us)', "
                  "got 5"):
        parse_detours(5)


@pytest.mark.parametrize("body, message", [
    ("0\t10\n10\n", "line 2: expected start_ns<TAB>duration_ns, two integers >= 0, got '10'"),
    ("# c\n\n0 -5\n", "line 3: expected start_ns<TAB>duration_ns, two integers >= 0, "
     "got '0 -5'"),
    ("1.5\t2\n", "line 1: expected start_ns<TAB>duration_ns, two integers >= 0, "
     "got '1.5\\t2'"),
    ("0\t1\t2\n", "line 1: expected start_ns<TAB>duration_ns, two integers >= 0, "
     "got '0\\t1\\t2'"),
    ("0 1_000\n", "line 1: expected start_ns<TAB>duration_ns, two integers >= 0, "
     "got '0 1_000'"),
    ("3600000000000\t1\n", "line 1: the detour ends after 1 hour, got '3600000000000\\t1'"),
    ("# nothing\n\n", "holds no detour"),
    ("", "holds no detour"),
    ("0\t0\n100\t0\n", "every detour has zero length, so the trace has no period of its own: "
     "give trace(path, period=...)"),
])
def test_trace_file_errors(tmp_path, body, message):
    path = tmp_path / "t.tsv"
    path.write_text(body)
    with one_line(f"detours: trace file {str(path)!r}: {message}"):
        Trace(file=str(path))


def test_trace_files_that_are_not_regular_files(tmp_path):
    with one_line(f"detours: trace file {str(tmp_path)!r}: is a directory: only a regular "
                  "file is read"):
        parse_detours(f"trace('{tmp_path}')")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # an open would block forever: it is never opened
    with one_line(f"detours: trace file {str(fifo)!r}: is a FIFO (named pipe): only a "
                  "regular file is read"):
        parse_detours(f"trace('{fifo}')")
    missing = tmp_path / "gone.tsv"
    with one_line(f"detours: trace file {str(missing)!r}: cannot be read: No such file or "
                  "directory"):
        parse_detours(f"trace('{missing}')")


def test_trace_period_errors(tmp_path):
    path = write_trace(tmp_path / "t.tsv", TRACE_TICKS)  # its last detour ends at 125ms
    with one_line("detours: period: must be at least the last detour's end (125ms), got "
                  "0.1s"):
        parse_detours(f"trace({path}, period=100ms)")
    with one_line("detours: period: must be a duration in (0, 1 hour], got 0.0"):
        parse_detours(f"trace({path}, period=0s)")
    with one_line("detours: file: expected a file name, got ''"):
        Trace(file="")


# --- detours in a schedule --------------------------------------------------------------


@pytest.mark.parametrize("text, dist, name", [
    ("exponential(mean=1ms); detours=periodic(period=10ms, duration=250us)",
     "exponential(1ms)", "exponential(1ms); detours=periodic(period=10ms, duration=250us)"),
    ("detours=periodic(period=10ms, duration=250us)", "constant(0s)",
     "detours=periodic(period=10ms, duration=250us)"),
    ("constant(0s); scope=node; detours=periodic(10ms, 250us, phase=aligned); name=n",
     "constant(0s)", "n"),
])
def test_schedule_one_line_form(text, dist, name):
    s = parse_schedule(text)
    assert str(s.dist) == dist and s.name == name
    assert s.detours == Periodic(period=10e-3, duration=250e-6,
                                 phase="aligned" if "aligned" in text else "random")
    assert parse_schedule(str(s)) == s
    assert schedule_from_table(s.to_table()) == s
    assert s.to_table()["detours"] == str(s.detours)


def test_schedule_table_form(tmp_path):
    path = write_trace(tmp_path / "t.tsv", TRACE_TICKS)
    s = schedule_from_table({"detours": f"trace({path})", "name": "os noise"})
    assert s.dist == Constant(value_s=0.0) and s.detours == Trace(file=path)
    assert schedule_from_table(s.to_table()) == s and parse_schedule(str(s)) == s
    assert input_files(s) == [path]  # a point's id covers the trace's contents
    samples = tmp_path / "samples.txt"
    samples.write_text("latency_us\n1\n2\n")
    both = schedule_from_table({"dist": f"empirical({samples})", "detours": f"trace({path})",
                                "stragglers": {"ranks": [1], "dist": f"empirical({samples})"}})
    assert input_files(both) == [str(samples), path]  # each once
    periodic = parse_schedule("detours=periodic(period=10ms, duration=250us)")
    assert input_files(periodic) == [] and input_files(periodic.detours) == []
    # Without detours the table is what it always was (the ids of earlier points).
    assert "detours" not in parse_schedule("exponential(1ms)").to_table()


@pytest.mark.parametrize("table, message", [
    ({"detours": 5}, "jitter: detours: expected text such as 'periodic(period=10ms, "
     "duration=250us)', got 5"),
    ({"detours": {"kind": "periodic"}}, "jitter: detours: expected text such as "
     "'periodic(period=10ms, duration=250us)', got {'kind': 'periodic'}"),
    ({"dist": "constant(1us)", "detours": "periodic(period=10ms)"},
     "jitter: detours: periodic: missing duration"),
    ({"detours": "periodic(period=1ms, duration=1ms)"},
     "jitter: detours: duration: must be shorter than the period (1ms), got 1ms"),
    ({"detours": "trace(/nonexistent/t.tsv)"}, "jitter: detours: trace file "
     "'/nonexistent/t.tsv': cannot be read: No such file or directory"),
])
def test_schedule_table_errors(table, message):
    with one_line(message):
        schedule_from_table(table)


def test_schedule_errors():
    with pytest.raises(ValueError, match=r"^jitter: missing key 'dist' \(or 'detours'"):
        schedule_from_table({"scope": "node"})
    with one_line("jitter: detours: unknown kind 'often' (known: periodic, trace)"):
        parse_schedule("exponential(1ms); detours=often(1ms)")
    with pytest.raises(ValueError, match=r"^jitter 'x; detours=periodic\(period=1ms, "
                       r"duration=1us\); detours=periodic\(period=2ms, duration=1us\)': "
                       r"detours given twice$"):
        parse_schedule("x; detours=periodic(period=1ms, duration=1us); "
                       "detours=periodic(period=2ms, duration=1us)")
    with pytest.raises(ValueError, match="^jitter: detours: not a detours model: 'periodic'$"):
        Schedule(dist=Constant(value_s=0.0), detours="periodic")


def test_detours_are_not_part_of_the_delays_or_marginals():
    plain = parse_schedule("exponential(1ms)")
    noisy = parse_schedule("exponential(1ms); detours=periodic(period=10ms, duration=1ms)")
    assert np.array_equal(plain.delays(1, 2, 0, 4, 3, 5), noisy.delays(1, 2, 0, 4, 3, 5))
    assert plain.rank_dist(1, 2, 4) == noisy.rank_dist(1, 2, 4)
    assert plain.site_groups(1, 4) == noisy.site_groups(1, 4)
    assert isinstance(noisy.detours, Detours)


def test_clear_says_true_only_where_end_adds_nothing():
    """``clear`` (the real ranks' plain-float shortcut) against the vectorized ``end``:
    wherever it says the work meets no detour, end must be exactly t + work; and it must
    say so for most quiet sites (else it saves nothing)."""
    import random

    from jitter_models.detours import Periodic

    rnd = random.Random(5)
    d = Periodic(period=10e-3, duration=250e-6)
    clear = 0
    for _ in range(20_000):
        t, w, off = rnd.uniform(0, 1), rnd.uniform(0, 2e-3), rnd.uniform(0, 10e-3)
        if d.clear(t, w, off):
            clear += 1
            assert float(d.end(t, w, off)) == pytest.approx(t + w, abs=1e-12)
    # P(no detour within the window) = 1 - (0.25 + 1)/10 on average: about 87%
    assert clear > 0.8 * 20_000


def _dense_trace(path, detours: int = 4000, period_ns: int = 2_000_000_000) -> str:
    """A trace like a measured one: thousands of detours a period, short ones mostly (a
    lognormal of median 2 us) and a few of milliseconds."""
    rng = np.random.default_rng(8)
    starts = np.sort(rng.choice(period_ns - 10_000_000, detours, replace=False))
    durations = np.minimum(np.exp(rng.normal(np.log(2000), 1.5, detours)).astype(np.int64) + 1,
                           np.diff(np.concatenate([starts, [period_ns]])) - 1)
    path.write_text("".join(f"{s}\t{d}\n" for s, d in zip(starts, durations)))
    return f"trace('{path}', period={period_ns / 1e9:g}s)"


@pytest.mark.parametrize("work_s", [1e-4, 1e-3])
def test_the_exact_lag_law_is_the_lag_at_a_uniform_position(tmp_path, work_s):
    """``lag_survival`` against 10^6 uniform positions through ``end``: P(lag > l) at the
    lags' own quantiles 0.5 .. 0.9999 within 5 binomial SEs (plus 2e-5 for the atoms'
    float ties; false-failure rate under 1e-6 each)."""
    d = parse_detours(_dense_trace(tmp_path / "t.tsv"))
    grid, sf = d.lag_survival(work_s)
    assert np.all(np.diff(grid) >= 0) and np.all(np.diff(sf) <= 1e-12)
    x = np.random.default_rng(3).random(1_000_000) * d.period_s
    lag = d.end(x, work_s, 0.0) - x
    for q in (0.5, 0.9, 0.99, 0.999, 0.9999):
        l = float(np.quantile(lag, q))
        emp, exact = float((lag > l).mean()), float(np.interp(l, grid, sf))
        assert abs(emp - exact) <= 5 * np.sqrt(exact * (1 - exact) / lag.size) + 2e-5, (q,
                                                                                      emp,
                                                                                      exact)
