"""The workload extension point: a workload that lives outside the package
(``tests/workloads/toy_sleep.py``), named in a spec as ``module:Class``, runs through
``jitterlab validate``, ``jitterlab run`` (world sizes 1 and 2, mpirun) and ``jitterlab
report`` with no other file knowing it. ``run`` is the installed console script (its
ranks find the toy on PYTHONPATH); ``validate`` and ``report`` run in this process, with
the toy's folder on sys.path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.cli import main

JITTERLAB = str(Path(sys.executable).with_name("jitterlab"))
WORKLOADS = Path(__file__).resolve().parents[1] / "workloads"
SITES, COMPUTE_MS, DELAY_MS = 3, 2.0, 3.0

SPEC = f"""
name = "toy"
workload = "toy_sleep:SleepAllReduce"
sites = {SITES}
compute = "{COMPUTE_MS:g}ms"
count = 64
world_sizes = [1, 2]
backend = "mpi"
steps = 12
warmup = 2
timeout_s = 60

[[jitter]]
name = "none"
dist = "constant(0s)"

[[jitter]]
name = "late"
dist = "constant({DELAY_MS:g}ms)"
"""


def _pythonpath() -> dict[str, str]:
    """The environment that lets a fresh process (the console script, a rank) import the
    toy."""
    return {"PYTHONPATH": os.pathsep.join(
        [str(WORKLOADS), *filter(None, [os.environ.get("PYTHONPATH")])])}


def _jitterlab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([JITTERLAB, *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **_pythonpath()}, timeout=300)


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """``jitterlab ARGS`` in this process, run from tmp_path with the toy importable (and
    sys.path restored after: a failed import may add the working directory to it)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(WORKLOADS))

    def call(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        code = main(list(args))
        out = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out.out, out.err)

    return call


def test_a_workload_outside_the_package_runs_through_jitterlab_run(tmp_path, cli):
    spec = tmp_path / "toy.toml"
    spec.write_text(SPEC)
    res = cli("validate", str(spec))
    assert res.returncode == 0, res.stderr
    assert "toy_sleep: 3 x (sleep 2 ms" in res.stdout and "4 points" in res.stdout

    res = _jitterlab("run", str(spec), "--out", "out", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "out"
    summaries = {}
    for folder in (out / "points").iterdir():
        s = json.loads((folder / "summary.json").read_text())
        summaries[(s["schedule"], s["world_size"])] = s
    assert sorted(summaries) == [("late", 1), ("late", 2), ("none", 1), ("none", 2)]
    for (schedule, n), s in summaries.items():
        d = s["decomposition_us"]
        assert s["step_latency"]["n"] == 12 and d["n_ranks"] == n
        # The toy's sleeps are its compute and the schedule's delays its delay, per step:
        # a sleep overshoots (~0.1 ms here), never ends early.
        assert SITES * COMPUTE_MS * 1e3 <= d["compute_us"] < SITES * (COMPUTE_MS + 1.5) * 1e3
        want = SITES * DELAY_MS * 1e3 if schedule == "late" else 0.0
        assert want <= d["delay_us"] < want + SITES * 1.5e3
        assert s["step_latency"]["p50_us"] >= SITES * COMPUTE_MS * 1e3 + want
    # Rank metadata names the workload as the spec did; the plan carries its params.
    from collectives.timing import read_rank_file

    folder = next((out / "points").iterdir())
    _, meta = read_rank_file(folder / "rank-00000.parquet")
    assert meta["plan"]["workload"] == "toy_sleep:SleepAllReduce"
    assert meta["plan"]["params"]["sites"] == SITES

    res = cli("report", "out")
    assert res.returncode == 0, res.stderr
    report = (out / "report.md").read_text()
    assert "toy_sleep: 3 x (sleep 2 ms, all-reduce of 64 elements)" in report
    assert "compute(N) the measured compute, held" in report


def test_a_workload_that_cannot_be_imported_is_bad_input(tmp_path, cli):
    spec = tmp_path / "toy.toml"
    spec.write_text(SPEC.replace("toy_sleep:SleepAllReduce", "no_such_module:Thing"))
    res = cli("validate", str(spec))
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "workload: cannot import 'no_such_module'" \
        in res.stderr, res.stderr
    spec.write_text(SPEC.replace('sites = 3', 'sites = 0'))
    res = cli("validate", str(spec))
    assert res.returncode == 2 and "sites: must be an integer in [1, 64], got 0" in res.stderr


def test_an_outside_workload_gets_explicit_algorithms_link_jitter_and_hop_rows(
        tmp_path, jitterlab, monkeypatch):
    # The same toy through a ring with per-hop delays: the extension point hands it the
    # algorithm, the link-scoped schedule and the hop log; the point's summary covers
    # (checksums) the hop files. ``run`` in this process this time (the test above runs
    # the console script): the toy on sys.path here, on PYTHONPATH for the ranks.
    spec = tmp_path / "toy.toml"
    text = SPEC.replace("world_sizes = [1, 2]", 'world_sizes = [2]\nalgorithm = "ring"\n'
                        "record_hops = true")
    text = text[:text.index("[[jitter]]")] + '[[jitter]]\nname = "hop"\n' \
        'dist = "constant(1ms)"\nscope = "link"\n'
    spec.write_text(text)
    monkeypatch.syspath_prepend(str(WORKLOADS))
    res = jitterlab("run", str(spec), "--out", "out", cwd=tmp_path, env=_pythonpath())
    assert res.returncode == 0, res.stderr
    (folder,) = (tmp_path / "out" / "points").iterdir()
    summary = json.loads((folder / "summary.json").read_text())
    assert {"hops-00000.parquet", "hops-00001.parquet"} <= set(summary["files"])
    from collectives.timing import read_rank_file

    cols, _ = read_rank_file(folder / "rank-00000.parquet")
    sites = cols["site"] >= 0
    # ring at N = 2: two steps, one send each, 1 ms before each send
    assert np.all(cols["hop_delay_req_ns"][sites] == 2_000_000)
    assert np.all(cols["hop_delay_ns"][sites] >= 2_000_000)
    hops, _ = read_rank_file(folder / "hops-00000.parquet")
    assert len(hops["call"]) == (12 + 2) * SITES * 2 * 2  # calls x (2 sends + 2 receives)
