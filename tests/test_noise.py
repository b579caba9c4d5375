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


def _spin_to(queue, seconds: float) -> None:
    s, d, reads, elapsed = noise.spin(seconds, 1000)
    queue.put((s.tolist(), d.tolist(), reads, elapsed))


def test_a_stopped_spinner_records_the_stop_as_one_interruption_when_it_happened():
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_spin_to, args=(q, 1.0))
    p.start()
    time.sleep(0.4)  # the child is spinning (its start-up is well under 0.3 s here)
    os.kill(p.pid, signal.SIGSTOP)
    time.sleep(0.06)
    os.kill(p.pid, signal.SIGCONT)
    starts, durations, reads, elapsed = q.get(timeout=30)
    p.join(30)
    assert reads > 1_000_000 and 0.99e9 <= elapsed < 1.5e9  # the loop: < 1 µs a read
    long = [(s, d) for s, d in zip(starts, durations) if d >= 50_000_000]
    assert len(long) == 1, long  # the stop, and nothing else as long
    s, d = long[0]
    assert 60_000_000 <= d < 400_000_000 and 0 < s < 0.7e9, (s, d)
    assert all(x > 1000 for x in durations)  # only gaps over the threshold


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
