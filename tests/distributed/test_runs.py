"""Real multi-process runs: torchrun + gloo, mpirun + MPI (2 and 4 ranks), mpirun + gloo
(MPI shares the rendezvous), and a single local rank. Each launch exercises every
collective with the exact-result check, and the records are checked for consistency.

World sizes above the 2 cores here measure the scheduler, so these tests assert
correctness and record structure, not speed; the one timing assertion (delays are never
early) holds however loaded the machine is.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from collectives.timing import read_rank_file
from experiments.bench import run_bench
from launch.plan import Plan
from launch.supervise import RunFailed

ALL = ("all_reduce", "all_gather", "reduce_scatter", "broadcast", "all_to_all")
JITTERLAB = str(Path(sys.executable).with_name("jitterlab"))


def plan(tmp_path: Path, **kw) -> Plan:
    base = dict(workload="microbench", out_dir=str(tmp_path / "run"), colls=ALL,
                sizes=(64, 4096), iters=8, warmup=2, check=True, timeout_s=60,
                jitter="exponential(20us)", seed=3)
    return Plan.build(**{**base, **kw})


def assert_consistent(p: Plan, nproc: int) -> None:
    """Every rank's records: one row per (iteration, case), monotone times, delays as
    asked (never early: the injector waits for an absolute deadline)."""
    for rank in range(nproc):
        cols, meta = read_rank_file(p.rank_file(rank))
        assert meta["rank"] == rank and meta["world_size"] == nproc
        assert len(cols["step"]) == (p.params["iters"] * len(p.params["colls"])
                                     * len(p.params["sizes"]))
        assert np.all(cols["t_start_ns"] <= cols["t_arrive_ns"])
        assert np.all(cols["t_arrive_ns"] <= cols["t_done_ns"])
        assert np.array_equal(cols["delay_ns"], cols["t_arrive_ns"] - cols["t_start_ns"])
        assert np.all(cols["delay_ns"] >= cols["delay_req_ns"])
        assert cols["delay_req_ns"].max() > 0  # the schedule asked for delays
        # Near what was asked: a loose 50 us on the median, since 2-4 ranks share 2 cores
        # in CI (benchmarks/bench_inject.py holds the real fidelity targets). With more
        # ranks than cores delays only sleep (the worker's choice), and the OS overshoots
        # a sleep by ~70 us: 200 us then.
        late_us = (cols["delay_ns"] - cols["delay_req_ns"]) / 1e3
        sleep_only = nproc > (os.cpu_count() or 1)
        assert meta["injector"].endswith("(sleep only: more ranks than cores)") == sleep_only
        assert np.median(late_us) <= (200 if sleep_only else 50), np.median(late_us)


# Two-rank runs whose clock offsets also come from ping-pong (clock_pingpong): one launch
# serves test_every_collective_... and test_ping_pong_...; the other runs keep the default.
PINGPONG = {("mpirun", "mpi", 2), ("torchrun", "gloo", 2)}


@pytest.fixture(scope="module")
def every_collective(tmp_path_factory):
    """(plan, result) of the every-collective bench of a (launcher, backend, nproc), run on
    first use and kept for the module: several tests read the same launch."""
    done: dict[tuple[str, str, int], tuple[Plan, dict]] = {}

    def get(launcher: str, backend: str, nproc: int) -> tuple[Plan, dict]:
        key = (launcher, backend, nproc)
        if key not in done:
            p = plan(tmp_path_factory.mktemp(f"{launcher}-{backend}-{nproc}"),
                     backend=backend, clock_pingpong=key in PINGPONG)
            done[key] = p, run_bench(p, launcher=launcher, nproc=nproc)
        return done[key]

    return get


@pytest.mark.parametrize("launcher,backend,nproc", [
    ("torchrun", "gloo", 2),
    ("mpirun", "mpi", 2),
    ("mpirun", "mpi", 4),   # oversubscribed: 2 cores here
    ("mpirun", "gloo", 2),  # rank 0's address and port reach the others over MPI
    ("local", "mpi", 1),
    ("local", "gloo", 1),
])
def test_every_collective_is_correct_and_recorded(every_collective, launcher, backend, nproc):
    p, result = every_collective(launcher, backend, nproc)
    rows = result["rows"]
    assert [(r["coll"], r["size_bytes"]) for r in rows] == [
        (c, s) for c in ALL for s in (64, 4096)]
    assert all(r["wrong"] == 0 for r in rows), rows
    assert result["backend"] == backend and result["world_size"] == nproc
    for r in rows:
        assert r["min_us"] <= r["p50_us"] <= r["p90_us"] <= r["p99_us"] <= r["max_us"]
        assert r["skew_us"] is not None  # one host: clocks are comparable
    assert_consistent(p, nproc)


def test_bfloat16_is_exact_over_gloo(tmp_path):
    p = plan(tmp_path, backend="gloo", dtype="bfloat16", colls=("all_reduce", "all_gather"),
             redop="sum")
    rows = run_bench(p, launcher="torchrun", nproc=2)["rows"]
    assert [r["wrong"] for r in rows] == [0, 0, 0, 0]


def test_the_same_delays_reach_a_rank_at_every_world_size(every_collective):
    # Paired comparisons: rank 0 is asked for the same delays at N = 1 and N = 2 (the
    # every-collective runs: the same plan but for the ranks, every site asks for delays).
    asked = []
    for nproc, launcher in ((1, "local"), (2, "mpirun")):
        p, _ = every_collective(launcher, "mpi", nproc)
        asked.append(read_rank_file(p.rank_file(0))[0]["delay_req_ns"])
    assert asked[0].size == len(ALL) * 2 * 8 and asked[0].max() > 0
    assert np.array_equal(asked[0], asked[1])


@pytest.mark.parametrize("launcher,backend", [("mpirun", "mpi"), ("torchrun", "gloo")])
@pytest.mark.parametrize("kind", ["exit", "hang"])
def test_a_rank_that_dies_or_hangs_is_named_within_the_timeout(tmp_path, launcher, backend,
                                                                kind):
    p = plan(tmp_path, backend=backend, colls=("all_reduce",), sizes=(64,), iters=20,
             check=False, timeout_s=3, fault=f"{kind}@1:5")
    t0 = time.monotonic()
    with pytest.raises(RunFailed, match=r"rank 1 stopped at collective #4 \(others reached "
                                        r"#5\)"):
        run_bench(p, launcher=launcher, nproc=2)
    # The timeout is 3 s of no progress, plus start-up and teardown.
    assert time.monotonic() - t0 < 30


def test_cli_bench_writes_json_and_csv_with_the_nccl_tests_keys(tmp_path, jitterlab):
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    # in this process (``jitterlab``, conftest.py); the next test runs the console script
    res = jitterlab(
        "bench", "--launcher", "mpirun", "--nproc", "2", "--backend", "mpi",
        "-b", "1K", "-e", "4K", "-f", "4", "-n", "5", "-w", "1", "-c", "--jitter",
        "constant(10us)", "--out", str(tmp_path / "run"), "--json", str(out_json),
        "--csv", str(out_csv))
    assert res.returncode == 0, res.stderr
    doc = json.loads(out_json.read_text())
    keys = {"size_bytes", "min_us", "p50_us", "p90_us", "p99_us", "p999_us", "max_us",
            "mean_us", "algbw_gbps", "busbw_gbps", "skew_us", "wrong"}
    assert [r["size_bytes"] for r in doc["rows"]] == [1024, 4096]
    assert all(keys <= set(r) for r in doc["rows"])
    assert all(r["p50_us"] >= 10 for r in doc["rows"])  # every iteration waits >= 10 us
    # busbw = algbw * 2(n-1)/n for all_reduce at n = 2: equal.
    assert all(r["busbw_gbps"] == pytest.approx(r["algbw_gbps"]) for r in doc["rows"])
    with open(out_csv) as f:
        assert [int(r["size_bytes"]) for r in csv.DictReader(f)] == [1024, 4096]
    assert "size_B" in res.stdout and "busbw_GB/s" in res.stdout


def test_cli_rejects_bad_input_before_starting_any_process(tmp_path):
    res = subprocess.run([JITTERLAB, "bench", "--backend", "mpi", "-d", "bfloat16",
                          "--out", str(tmp_path / "run")], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip() == ("jitterlab: error: dtype: MPI has no bfloat16 type; use "
                                  "float16 or float32 with backend mpi, or a torch backend "
                                  "for bfloat16")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("launcher,backend", [("mpirun", "mpi"), ("torchrun", "gloo")])
def test_ping_pong_offsets_on_one_host_bracket_zero(every_collective, launcher, backend):
    # On one host the true offset is 0: the estimate must contain it.
    assert (launcher, backend, 2) in PINGPONG
    p, result = every_collective(launcher, backend, 2)
    assert p.clock_pingpong
    rank1 = result["clock_offsets"][1]
    assert rank1["uncertainty_ns"] is not None and 0 < rank1["uncertainty_ns"] < 5_000_000
    assert abs(rank1["offset_ns"]) <= rank1["uncertainty_ns"]
    assert result["rows"][0]["skew_us"] is not None


def test_a_directory_that_holds_a_run_is_refused(every_collective):
    p, _ = every_collective("local", "mpi", 1)  # a finished run's folder
    before = sorted(x.name for x in Path(p.out_dir).iterdir())
    with pytest.raises(ValueError, match=r"already holds a run; choose another directory"):
        run_bench(p, launcher="local", nproc=1)
    assert sorted(x.name for x in Path(p.out_dir).iterdir()) == before


@pytest.mark.parametrize("launcher,backend", [("mpirun", "mpi"), ("torchrun", "gloo")])
def test_a_rank_stopped_inside_a_collective_is_named_and_nothing_is_left(tmp_path, launcher,
                                                                           backend):
    # SIGSTOP freezes the whole rank: its mark looks like the others' (all inside the same
    # collective), but its heartbeat stops.
    import os
    import signal

    from launch.progress import read_board

    out = tmp_path / "run"
    # A stopped rank cannot act on SIGTERM: torchrun waits for it, so the launcher's group
    # gets SIGKILL after the grace (1 s here instead of 5).
    proc = subprocess.Popen(
        [JITTERLAB, "bench", "--launcher", launcher, "--nproc", "2", "--backend", backend,
         "-b", "64", "-e", "64", "-n", "1000000", "-w", "0", "--timeout", "3",
         "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "JITTERLAB_TERM_GRACE_S": "1"})
    deadline = time.monotonic() + 60
    board = read_board(out)
    while time.monotonic() < deadline:
        board = read_board(out)
        if board.size and (board[:, 0] > 50).all() and (board[:, 2] > 0).all():
            break
        time.sleep(0.1)
    pids = board[:, 2].tolist()
    os.kill(pids[1], signal.SIGSTOP)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "rank 1 stopped responding (no heartbeat)" in err, err
    for pid in pids:  # no rank survives the failed run
        with pytest.raises(ProcessLookupError):
            for _ in range(50):
                os.kill(pid, 0)
                time.sleep(0.1)


# Outside a SLURM allocation: srun missing, or installed but with no job to run in.
SRUN_REFUSAL = ("launcher: srun is not on PATH" if shutil.which("srun") is None
                else "launcher: srun needs a SLURM allocation")


@pytest.mark.parametrize("args,message", [
    (["-b", "3", "-e", "3"], "all_reduce: size_bytes=3 is smaller than one element"),
    (["--coll", "all_gather", "-b", "2", "-e", "2", "--nproc", "2", "--launcher", "mpirun"],
     "all_gather: size_bytes=2 is smaller than 2 elements (one per rank)"),
    (["--timeout", "1e15"], "timeout_s: must be > 0 s and at most a day"),
    (["--launcher", "srun"], SRUN_REFUSAL),
    (["--json", "/proc/x.json"], "json: cannot write '/proc/x.json'"),
    (["--csv", "/tmp"], "csv: '/tmp' is a directory"),
    (["--jitter", "exponential(20us"], "column 17"),
])
def test_bad_bench_flags_stop_before_any_process_or_file(tmp_path, args, message, capsys):
    from experiments.cli import main

    out = tmp_path / "run"
    # In this process: the CLI's own handling, without a console script's start-up each
    # (test_cli_rejects_bad_input_before_starting_any_process runs the console script).
    code = main(["bench", *args, "--out", str(out)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert not out.exists()


def test_the_mpi_backend_refuses_a_launcher_that_is_not_mpi(tmp_path):
    # Under torchrun each rank would be a separate one-process MPI world: no data would
    # move, and the check (at world size 1) could not see it.
    p = plan(tmp_path, backend="mpi", colls=("all_reduce",), sizes=(64,), iters=2)
    with pytest.raises(RunFailed, match=r"backend: mpi sees a world of 1 but torchrun "
                                        r"started 2 ranks"):
        run_bench(p, launcher="torchrun", nproc=2)


@pytest.mark.parametrize("launcher,backend", [("mpirun", "mpi"), ("torchrun", "gloo")])
def test_records_gathered_to_rank_zero_when_the_folder_is_not_shared(tmp_path, launcher,
                                                                     backend):
    # Forced here (one host shares its disk); on nodes with local disks "auto" does it.
    p = plan(tmp_path, backend=backend, colls=("all_reduce",), sizes=(64,), iters=3,
             gather_records="always")
    result = run_bench(p, launcher=launcher, nproc=2)
    assert [r["wrong"] for r in result["rows"]] == [0]
    metas = [read_rank_file(p.rank_file(r))[1] for r in range(2)]
    assert [(m["rank"], m.get("written_by")) for m in metas] == [(0, 0), (1, 0)]
    assert not list(Path(p.out_dir).glob(".shared-*"))
