"""Sweeps end to end: points run and committed, a report with its plots, resume, failed
points recorded while the sweep goes on, and a sweep killed mid-way resumed without loss
or duplication."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import sweep_specs  # beside this file: pytest puts its folder on sys.path

JITTERLAB = str(Path(sys.executable).with_name("jitterlab"))
# One schedule: the points at N = 1 and 2, for the tests that need points, not schedules.
ONE = (("exp", "exponential(20us)"),)


def write_spec(tmp_path: Path, steps: int = 5, launcher: str = "auto",
               jitter: tuple[tuple[str, str], ...] = sweep_specs.JITTER) -> Path:
    return sweep_specs.write_spec(tmp_path / "spec.toml", steps=steps, launcher=launcher,
                                  jitter=jitter)


def test_a_sweep_runs_reports_and_resumes(tmp_path, jitterlab):
    spec = write_spec(tmp_path)
    res = jitterlab("run", str(spec), "--out", "out", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "out"
    points = sorted(p.name for p in (out / "points").iterdir())
    assert len(points) == 4 and not any(p.startswith(".tmp") for p in points)
    for p in points:
        summary = json.loads((out / "points" / p / "summary.json").read_text())
        assert summary["step_latency"]["n"] == 5
        assert summary["injectors"] == ["host"]  # the model reads whether delays were spun
        assert len(list((out / "points" / p).glob("rank-*.parquet"))) == summary["world_size"]
    for name in ("report.md", "report.html", "points.csv", "scaling.csv",
                 "latency_vs_n.png", "efficiency_vs_n.png", "predicted_vs_measured.png",
                 "step_latency_cdf.png", "wait_heatmap_exp.png",
                 "model_efficiency_vs_n.png", "manifest.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "latency_vs_n.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "data:image/png;base64," in (out / "report.html").read_text()
    report = (out / "report.md").read_text()
    assert "## Model: the simulator fitted on the no-jitter points" in report
    with open(out / "points.csv", newline="") as f:
        assert {r["injector"] for r in csv.DictReader(f)} == {"host"}
    rows = (out / "model_validation.csv").read_text().splitlines()
    assert rows[0] == ("schedule,world_size,measured_mean_us,model_mean_us,measured_p99_us,"
                       "model_p99_us,in_sample")
    flags = {tuple(r.split(",")[:2]): r.split(",")[-1] for r in rows[1:]}
    assert flags == {("none", "1"): "True", ("none", "2"): "True", ("exp", "1"): "False",
                     ("exp", "2"): "False"}
    manifest = json.loads((out / "manifest.json").read_text())
    (run_entry,) = manifest["runs"]  # one run so far: what ran, when, on which software
    assert manifest["spec"]["name"] == "t" and run_entry["versions"]["numpy"]
    assert sorted(run_entry["points_run"]) == points and run_entry["end_time_utc"]
    stack = run_entry["stack"]  # what doctor sees: torch build, GPUs, NCCL, the MPI library
    assert stack["torch"]["available"] and stack["mpi"]["available"]
    assert stack["mpi"]["detail"].startswith(("Open MPI", "MPICH")) and "cuda" in stack
    again = jitterlab("run", str(spec), "--out", "out", cwd=tmp_path)
    assert again.returncode == 0 and "0 points run, 4 already complete" in again.stdout
    shown = jitterlab("show", "out", cwd=tmp_path)
    assert shown.returncode == 0 and len(shown.stdout.strip().splitlines()) == 1 + 4


def test_failed_points_are_recorded_and_the_sweep_goes_on(tmp_path, jitterlab):
    spec = write_spec(tmp_path, launcher="srun")  # no SLURM here: every point fails
    res = jitterlab("run", str(spec), "--out", "out", cwd=tmp_path)
    assert res.returncode == 1
    failed = sorted((tmp_path / "out" / "failed").glob("*.json"))
    assert len(failed) == 4
    info = json.loads(failed[0].read_text())
    assert ("srun is not on PATH" if shutil.which("srun") is None
            else "srun needs a SLURM allocation") in info["error"]
    assert not any((tmp_path / "out" / "points").iterdir())


def test_a_killed_sweep_resumes_without_loss_or_duplicates(tmp_path, jitterlab):
    spec = write_spec(tmp_path, steps=400, jitter=ONE)  # killed in the second of 2 points
    proc = subprocess.Popen([JITTERLAB, "run", str(spec), "--out", "out"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    points = tmp_path / "out" / "points"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = [p for p in points.glob("*") if not p.name.startswith(".")] \
            if points.exists() else []
        if len(done) >= 1 and list(points.glob(".tmp-*")):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    # The launcher dies with its parent (PR_SET_PDEATHSIG), its ranks with it: within 2 s.
    deadline = time.monotonic() + 2
    while True:
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        if str(tmp_path) not in ps or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert str(tmp_path) not in ps
    res = jitterlab("run", str(spec), "--out", "out", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "1 points run, 1 already complete" in res.stdout
    names = sorted(p.name for p in points.iterdir())
    assert len(names) == 2 and len(set(names)) == 2
    assert not any(n.startswith(".tmp") for n in names)
    # No rank of the killed sweep is still running.
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in ps
    assert os.path.exists(tmp_path / "out" / "report.html")


def test_sigterm_stops_a_sweep_cleanly_and_a_rerun_resumes(tmp_path, jitterlab):
    """scancel, a SLURM time limit or kill: the runner unwinds as for Ctrl-C (ranks
    stopped, lock released, the partial point removed) and says so."""
    spec = write_spec(tmp_path, steps=400, jitter=ONE)
    proc = subprocess.Popen([JITTERLAB, "run", str(spec), "--out", "out"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    points = tmp_path / "out" / "points"
    deadline = time.monotonic() + 120
    while not list(points.glob(".tmp-*/progress.bin")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "jitterlab: interrupted" in err
    assert not (tmp_path / "out" / ".lock").exists() and not list(points.glob(".tmp-*"))
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in ps
    res = jitterlab("run", str(spec), "--out", "out", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert len([p for p in points.iterdir() if not p.name.startswith(".")]) == 2


def test_batch_lists_a_single_world_size_and_a_changed_spec_are_reported(tmp_path, jitterlab):
    # Regressions: a batch list collided in the scaling table; no N = 1 point broke the
    # plots; a rerun with a changed spec mixed the old points into the new report.
    spec = sweep_specs.write_spec(tmp_path / "spec.toml", steps=3, world_sizes=[2],
                                  batch=[1, 2], jitter=ONE)
    res = jitterlab("run", str(spec), "--out", "out", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    report = (tmp_path / "out" / "report.md").read_text()
    assert "exp (batch 1)" in report and "exp (batch 2)" in report
    assert "2 of 2 points complete" in report
    # The changed spec keeps the batch-1 point and replaces batch 2 with batch 3 (one
    # point to run, not two): the report must hold only the new spec's two points.
    spec.write_text(spec.read_text().replace("batch = [1, 2]", "batch = [1, 3]"))
    res = jitterlab("run", str(spec), "--out", "out", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "1 points run, 1 already complete" in res.stdout
    report = (tmp_path / "out" / "report.md").read_text()
    assert "2 of 2 points complete" in report  # only the new spec's points
    assert "exp (batch 3)" in report and "exp (batch 2)" not in report
    assert len(list((tmp_path / "out" / "points").iterdir())) == 3  # the old one kept on disk
