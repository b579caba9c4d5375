"""Results that are edited, corrupted or half there (issue 8, section 2), on the files of a
real sweep (two MPI points, N = 1 and 2): ``report`` and ``show`` name the bad file and
exit 2 (or, with --skip-bad, report the rest), ``run`` moves a bad point aside and runs it
again, and the manifest keeps every run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import sweep_specs  # beside this file

JITTERLAB = str(Path(sys.executable).with_name("jitterlab"))
JITTER = (("exp", "exponential(20us)"),)


@pytest.fixture(scope="module")
def made(tmp_path_factory, jitterlab) -> Path:
    """One real sweep, run once under umask 000 (``test_a_runs_files_have_one_mode_...``
    reads its modes); each other test works on a copy. (``jitterlab``: the command in this
    process, conftest.py.)"""
    where = tmp_path_factory.mktemp("sweep")
    sweep_specs.write_spec(where / "spec.toml", jitter=JITTER)
    res = jitterlab("run", "spec.toml", "--out", "out", cwd=where, umask=0)
    assert res.returncode == 0, res.stderr
    return where


@pytest.fixture
def sweep(made, tmp_path) -> Path:
    shutil.copytree(made, tmp_path / "w", symlinks=True)
    return tmp_path / "w"


def point_of(root: Path, world_size: int) -> Path:
    for p in (root / "out" / "points").iterdir():
        if json.loads((p / "summary.json").read_text())["world_size"] == world_size:
            return p
    raise AssertionError(f"no point at N = {world_size}")


def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGE = {  # what is done to the N = 2 point, and the file the error must name
    "bit flip in a rank file": (lambda p: flip_a_bit(p / "rank-00001.parquet"),
                                "rank-00001.parquet"),
    "truncated rank file": (lambda p: os.truncate(p / "rank-00000.parquet", 100),
                            "rank-00000.parquet"),
    "garbled rank file": (lambda p: (p / "rank-00001.parquet").write_bytes(b"PAR1" * 50),
                          "rank-00001.parquet"),
    "missing rank file": (lambda p: (p / "rank-00001.parquet").unlink(),
                          "rank-00001.parquet"),
    "empty summary": (lambda p: (p / "summary.json").write_text(""), "summary.json"),
    "garbled summary": (lambda p: (p / "summary.json").write_text('{"point": "x", '),
                        "summary.json"),
    "wrong-schema summary": (lambda p: edit_summary(p, step_latency=[1, 2]),
                             "summary.json"),
    "a p99 that is text": (lambda p: edit_summary(p, step_latency={"p99_us": "abc"}),
                           "summary.json"),
    "an interval that is a number": (lambda p: edit_summary(p, step_latency={
        "p99_ci_us": 5}), "summary.json"),
    "a site max without its request": (lambda p: edit_summary(p, site_max_us={}),
                                       "summary.json"),
    "another schedule's name": (lambda p: edit_summary(p, schedule="nope"), "summary.json"),
    "another world size": (lambda p: edit_summary(p, world_size=1), "summary.json"),
    "an edited p99": (lambda p: edit_summary(p, step_latency={"p99_us": 9999.0}),
                      "summary.json"),
    "checksums removed": (lambda p: edit_summary(p, files=None, summary_sha256=None,
                                                 schema=None), "summary.json"),
    "summary nested too deep": (lambda p: (p / "summary.json").write_text(
        "[" * 100000 + "]" * 100000), "summary.json"),
    "summary is a fifo": (lambda p: ((p / "summary.json").unlink(),
                                     os.mkfifo(p / "summary.json")), "summary.json"),
}


def edit_summary(point: Path, **changes) -> None:
    """Change fields of a summary by hand, as a careless colleague would: a dict value is
    merged into the table ({} empties it), None removes the field."""
    doc = json.loads((point / "summary.json").read_text())
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        elif value and isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    (point / "summary.json").write_text(json.dumps(doc, indent=2))


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_report_and_show_name_the_bad_file_and_exit_2(sweep, damage, capsys, monkeypatch):
    from experiments.cli import main

    harm, name = DAMAGE[damage]
    bad = point_of(sweep, 2)
    harm(bad)
    monkeypatch.chdir(sweep)
    for cmd in ("report", "show"):
        code = main([cmd, "out"])  # in this process: the CLI's own handling, no traceback
        err = capsys.readouterr().err
        assert code == 2, (cmd, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("jitterlab: error: "), err
        assert f"out/points/{bad.name}/{name}:" in lines[0], lines[0]
    assert not (sweep / "out" / "report.md").read_text().count("Skipped")  # not rewritten


def test_skip_bad_reports_the_rest_and_lists_what_was_skipped(sweep, capsys, monkeypatch):
    from experiments.cli import main

    bad = point_of(sweep, 2)
    flip_a_bit(bad / "rank-00000.parquet")
    monkeypatch.chdir(sweep)
    assert main(["report", "out", "--skip-bad"]) == 0  # in this process, as above
    err = capsys.readouterr().err
    assert f"skipped point {bad.name}: out/points/{bad.name}/rank-00000.parquet:" in err
    report = (sweep / "out" / "report.md").read_text()
    assert "## Skipped points" in report and bad.name in report
    assert "1 of 2 points complete" in report
    assert main(["show", "out", "--skip-bad"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1 + 1


@dataclass
class Rerun:
    sweep: Path
    bad: Path
    first: dict
    """The manifest before the second run."""
    res: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def rerun(made, tmp_path_factory, jitterlab) -> Rerun:
    """A copy of the sweep with a bit flipped in its N = 2 point, run again once; two tests
    read it (the point moved aside and run again; the manifest's two runs)."""
    sweep = tmp_path_factory.mktemp("rerun") / "w"
    shutil.copytree(made, sweep, symlinks=True)
    first = json.loads((sweep / "out" / "manifest.json").read_text())
    bad = point_of(sweep, 2)
    flip_a_bit(bad / "rank-00001.parquet")
    return Rerun(sweep, bad, first, jitterlab("run", "spec.toml", "--out", "out", cwd=sweep))


def test_run_moves_a_bad_point_aside_and_runs_it_again(rerun, capsys, monkeypatch):
    from experiments.cli import main

    sweep, bad, res = rerun.sweep, rerun.bad, rerun.res
    assert res.returncode == 0, res.stderr
    warnings = [ln for ln in res.stderr.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and str(bad / "rank-00001.parquet") in warnings[0]
    assert "1 points run, 1 already complete" in res.stdout
    moved = list((sweep / "out" / "corrupt").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith(bad.name + "-")
    assert (moved[0] / "rank-00001.parquet").exists()  # kept for a look, not deleted
    monkeypatch.chdir(sweep)
    assert main(["report", "out"]) == 0, capsys.readouterr().err  # the new point reads back


def test_a_leftover_where_a_point_should_be_is_moved_aside(sweep, jitterlab):
    """Both kinds at once, one run: a file where the N = 1 point's folder should be, and
    the N = 2 point's folder without its summary (half a rank file)."""
    as_file, half = point_of(sweep, 1), point_of(sweep, 2)
    for bad in (as_file, half):
        shutil.rmtree(bad)
    as_file.write_text("not a point\n")
    half.mkdir()
    (half / "rank-00000.parquet").write_bytes(b"half")
    res = jitterlab("run", "spec.toml", "--out", "out", cwd=sweep)
    assert res.returncode == 0, res.stderr
    assert "2 points run, 0 already complete" in res.stdout
    assert (as_file / "summary.json").exists() and (half / "summary.json").exists()
    moved = sorted(p.name for p in (sweep / "out" / "corrupt").iterdir())
    assert len(moved) == 2, moved
    assert all(any(m.startswith(bad.name + "-") for m in moved) for bad in (as_file, half))


@pytest.mark.parametrize("damage", ["garbled", "runs not a list"])
def test_a_damaged_manifest_is_moved_aside_and_the_sweep_goes_on(sweep, damage, jitterlab):
    out = sweep / "out"
    old = json.loads((out / "manifest.json").read_text())
    text = '{"spec": ' if damage == "garbled" else json.dumps({**old, "runs": 5})
    (out / "manifest.json").write_text(text)
    res = jitterlab("run", "spec.toml", "--out", "out", cwd=sweep)
    assert res.returncode == 0, res.stderr
    (warning,) = [ln for ln in res.stderr.splitlines() if "warning" in ln]
    assert str(out / "manifest.json") in warning and "moved to" in warning
    (kept,) = (out / "corrupt").glob("manifest-*.json")
    assert kept.read_text() == text  # the old history is kept, not overwritten
    assert len(json.loads((out / "manifest.json").read_text())["runs"]) == 1


def test_the_manifest_keeps_every_run_and_each_point_says_which_made_it(rerun):
    """The second run (``rerun``) ran the N = 2 point again."""
    sweep, first = rerun.sweep, rerun.first
    out = sweep / "out"
    assert len(first["runs"]) == 1 and first["runs"][0]["ended"] == "the sweep ended"
    assert rerun.res.returncode == 0, rerun.res.stderr
    runs = json.loads((out / "manifest.json").read_text())["runs"]
    assert [r["run"] for r in runs][:1] == [first["runs"][0]["run"]] and len(runs) == 2
    assert runs[0]["versions"]["numpy"] and runs[1]["end_time_utc"]
    made_by = {json.loads((p / "summary.json").read_text())["world_size"]:
               json.loads((p / "summary.json").read_text())["run"]
               for p in (out / "points").iterdir()}
    assert made_by == {1: runs[0]["run"], 2: runs[1]["run"]}
    assert len(runs[0]["points_run"]) == 2 and runs[0]["points_failed"] == []
    assert runs[1]["points_run"] == [point_of(sweep, 2).name]


def test_editing_an_empirical_file_makes_a_new_point(tmp_path):
    """The id covers the samples' contents, so edited samples are never served stale."""
    from experiments.spec import load_spec
    from experiments.sweep import expand

    samples = tmp_path / "s.txt"
    samples.write_text("latency_us\n1\n2\n3\n")
    spec = tmp_path / "spec.toml"
    sweep_specs.write_spec(spec, jitter=(("emp", f"empirical({samples})"),))
    points = expand(load_spec(str(spec)))
    before = {p.id for p in points}
    points[0].check_inputs()  # unchanged: fine
    samples.write_text("latency_us\n1\n2\n30\n")
    after = {p.id for p in expand(load_spec(str(spec)))}
    assert before.isdisjoint(after) and len(after) == 2
    # Edited while the sweep runs (the ranks read the file by name): the point is not
    # kept under the old id.
    with pytest.raises(ValueError, match="changed while the sweep ran"):
        points[0].check_inputs()


def test_a_summary_from_before_checksums_is_checked_by_reading_its_ranks_back(sweep,
                                                                             capsys,
                                                                             monkeypatch):
    from experiments.cli import main

    monkeypatch.chdir(sweep)
    for p in (sweep / "out" / "points").iterdir():  # as jitterlab wrote them before
        edit_summary(p, files=None, summary_sha256=None, schema=None, run=None,
                     delays_clipped=None)
    assert main(["show", "out"]) == 0
    bad = point_of(sweep, 2)
    (bad / "rank-00001.parquet").write_bytes(b"PAR1" * 50)
    assert main(["show", "out"]) == 2
    assert f"out/points/{bad.name}/rank-00001.parquet: does not read back" in \
        capsys.readouterr().err


def test_a_failed_points_log_is_kept_beside_its_record(tmp_path, jitterlab):
    """The mpi backend under torchrun fails at bootstrap: the launcher's log survives the
    temporary folder, and the record cites it where it now is."""
    sweep_specs.write_spec(tmp_path / "spec.toml", launcher="torchrun", world_sizes=[2],
                           jitter=(("none", "constant(0s)"),))
    res = jitterlab("run", "spec.toml", "--out", "out", cwd=tmp_path)
    assert res.returncode == 1
    (record,) = (tmp_path / "out" / "failed").glob("*.json")
    info = json.loads(record.read_text())
    log = tmp_path / "out" / "failed" / f"{info['point']}.launcher.log"
    assert info["logs"] == [str(log)] and f"log {log}" in info["error"]
    assert "mpi sees a world of 1" in log.read_text()  # the ranks' own words, kept
    assert not list((tmp_path / "out" / "points").iterdir())


def test_a_sigkilled_gloo_rank_is_named(tmp_path):
    """Rank 1 of a gloo run under torchrun is SIGKILLed inside its loop: its mark looks
    like rank 0's, but the failure names it, from torchrun's per-rank exit codes."""
    import signal
    import time

    import numpy as np

    proc = subprocess.Popen([JITTERLAB, "bench", "--launcher", "torchrun", "--nproc", "2",
                             "--backend", "gloo", "-n", "10000000", "-b", "1K", "-e", "1K",
                             "--out", "b"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    board = tmp_path / "b" / "progress.bin"
    deadline = time.monotonic() + 120
    rows = np.zeros((0, 4), dtype=np.int64)
    while time.monotonic() < deadline:
        if board.exists():
            flat = np.fromfile(board, dtype=np.int64)  # two rows of (mark, beat, pid, ...)
            rows = flat.reshape(2, -1) if flat.size and flat.size % 2 == 0 else rows
            if rows.shape[0] == 2 and (rows[:, 0] > 100).all():
                break
        time.sleep(0.2)
    assert rows.shape[0] == 2 and (rows[:, 0] > 100).all(), "the ranks never got going"
    os.kill(int(rows[1, 2]), signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "rank 1 was killed by signal 9 (SIGKILL)" in err, err


def test_a_runs_files_have_one_mode_whatever_the_umask(made):
    """Under umask 000 (the module's sweep ran under it) nothing a run writes is writable
    by others: files 0644, folders 0755, the progress board (whose pids a rerun acts on)
    0600."""
    modes = {}
    for dirpath, dirnames, filenames in os.walk(made / "out"):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            modes[str(path.relative_to(made))] = path.stat().st_mode & 0o777
    assert len(modes) > 10
    boards = {p: m for p, m in modes.items() if p.endswith("progress.bin")}
    assert boards and set(boards.values()) == {0o600}
    dirs = {p: m for p, m in modes.items() if (made / p).is_dir()}
    assert set(dirs.values()) == {0o755}, dirs
    files = {p: m for p, m in modes.items() if p not in boards and p not in dirs}
    assert set(files.values()) == {0o644}, {p: oct(m) for p, m in files.items()}
