"""``jitterlab noise`` (experiments/noise.py, cli_noise.py): a spinner records an
interruption the test causes (the process stopped with SIGSTOP for 60 ms, then continued),
at the time it happened and at least as long; the command's files (JSON rows, a detour
trace that ``detours = "trace(...)"`` reads back, the report) and its bad input.

No statistical bound: the stop is a fact of the test, and a pinned spinner on a busy host
only adds interruptions, which the checks allow."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time

import pytest

from experiments import noise
from jitter_models.detour_trace import read_trace
from jitter_models.schedule_parse import parse_schedule


def _spin_to(queue, seconds: float, start_at: int) -> None:
    s, d, read_ns, elapsed = noise.spin(seconds, 1000, start_at)
    queue.put((s.tolist(), d.tolist(), read_ns, elapsed))


def test_a_stopped_spinner_records_the_stop_as_an_interruption_when_it_happened():
    """The spinner starts at a time the test sets (perf_counter_ns is CLOCK_MONOTONIC, one
    clock for both processes); the test stops it 0.4 s later for 60 ms: a recorded
    interruption covers that stop. A busy host may add others: the check allows them."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    start_at = time.perf_counter_ns() + 300_000_000
    p = ctx.Process(target=_spin_to, args=(q, 1.0, start_at))
    p.start()
    while time.perf_counter_ns() < start_at + 400_000_000:
        time.sleep(0.005)
    stopped = time.perf_counter_ns()
    os.kill(p.pid, signal.SIGSTOP)
    time.sleep(0.06)
    resumed = time.perf_counter_ns()
    os.kill(p.pid, signal.SIGCONT)
    starts, durations, read_ns, elapsed = q.get(timeout=30)
    p.join(30)
    assert read_ns < 1000 and elapsed == 1_000_000_000  # the loop: < 1 µs a read
    # the spinner's t0 is within a few µs after start_at and its warm-up (it spins to it)
    t0 = start_at + noise.WARMUP_NS
    a, b = stopped - t0, resumed - t0
    cover = [(s, d) for s, d in zip(starts, durations) if s <= a + 1_000_000
             and s + d >= b - 1_000_000]
    assert cover, (a, b, [(s, d) for s, d in zip(starts, durations) if d > 10_000_000])
    assert all(x > 1000 for x in durations)  # only gaps over the threshold
    assert max(s + d for s, d in zip(starts, durations)) <= elapsed  # within the run


def test_cli_noise_writes_rows_a_replayable_trace_and_a_report(tmp_path, cli):
    core = sorted(os.sched_getaffinity(0))[0]
    out, js = tmp_path / "n", tmp_path / "n.json"
    res = cli("noise", "--cores", str(core), "--seconds", "0.5", "--out", str(out), "--json",
              str(js))
    assert res.returncode == 0, res.stderr
    data = json.loads(js.read_text())
    assert data == json.loads((out / "noise.json").read_text())
    (row,) = data["rows"]
    assert row["core"] == core and 0.5 <= row["seconds"] < 1.0 and row["read_ns"] < 1000
    assert {"interruptions", "per_second", "p50_us", "p99_us", "p9999_us", "max_us",
            "lost_fraction"} <= set(row)
    assert 0 <= row["lost_fraction"] < 1
    trace = out / f"detours-core{core}.tsv"
    starts, durations = read_trace(str(trace))
    assert starts.size == row["interruptions"]
    assert (durations > 1000).all() and (starts < 1e9).all()
    if durations.size:
        assert durations.max() / 1e3 == pytest.approx(row["max_us"])
        sched = parse_schedule({"name": "host", "dist": "constant(0s)",
                                "detours": f"trace('{trace}', period=500ms)"})
        assert "trace(" in str(sched)
    assert "replay: detours = \"trace(" in res.stdout
    assert 'alt="Histogram of interruption durations' in (out / "report.html").read_text()


@pytest.mark.parametrize("args, message", [
    (["--cores", "9999"], "--cores: each core once, among those this process may use"),
    (["--cores", "a"], "--cores: expected comma-separated core numbers"),
    (["--seconds", "0"], "--seconds: must be in (0, 3600], got 0"),
    (["--threshold", "5ns"], "--threshold: 5ns is under 3 x the spin loop's own time"),
    (["--threshold", "2ms"], "--threshold: must be in (0, 1ms]"),
])
def test_bad_noise_flags_are_one_line_exit_2_and_nothing_is_written(tmp_path, cli, args,
                                                                     message):
    res = cli("noise", "--seconds", "0.2", "--out", str(tmp_path / "o"), *args)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
