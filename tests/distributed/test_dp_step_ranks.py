"""The dp_step workload on real ranks (``jitterlab run``, mpirun + MPI, N = 1 and 2) with
overlap off and on: every bucket's all-reduce is exact on every rank and every step.

The step: 2**20 float32 parameters (4 MiB of gradients) in 4 buckets of 1 MiB,
``tokens_per_rank`` sized so that the h100 roofline at 0.4 of peak gives 6.36 ms of
compute a step, a host spin on real ranks. Each rank draws an exponential delay (mean
300 us) after each site's compute.

The simulator's prediction of these points' step times (mean and p99, N = 1 out of
sample, the all-reduce's cost fitted at N = 2) is a benchmark, not a test: it needs an
otherwise idle host (a full suite beside it measured 22-35% off from host noise), so it
waits for one: ``benchmarks/validate_dp.py`` (figures in the README).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from collectives.timing import STEP_SITE, read_rank_file
from experiments.spec import load_spec

STEPS, WARMUP, SEED = 40, 10, 3  # the exact checks need no more

SPEC = """
name = "dp_{tag}"
workload = "dp_step"
parameters = 1048576
tokens_per_rank = 400000
bucket_size = "1MB"
overlap = {overlap}
world_sizes = [1, 2]
backend = "mpi"
launcher = "mpirun"
steps = {steps}
warmup = {warmup}
seed = {seed}
timeout_s = 60

[[jitter]]
name = "exp300us"
dist = "exponential(mean=300us)"
"""


def _env() -> dict[str, str]:
    return {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
            "PYTHONWARNINGS": "ignore"}


def _run(jitterlab, tmp: Path, overlap: bool) -> tuple[object, dict[int, list[dict]]]:
    """The spec and, per world size, each rank's records of its one point (``jitterlab``:
    the command in this process, conftest.py)."""
    tag = "on" if overlap else "off"
    path = tmp / f"dp_{tag}.toml"
    path.write_text(SPEC.format(tag=tag, overlap=str(overlap).lower(), steps=STEPS,
                                warmup=WARMUP, seed=SEED))
    out = tmp / f"out_{tag}"
    res = jitterlab("run", str(path), "--out", str(out), cwd=tmp, env=_env())
    assert res.returncode == 0, res.stderr[-3000:]
    points: dict[int, list[dict]] = {}
    for folder in (out / "points").iterdir():
        files = sorted(folder.glob("rank-*.parquet"))
        points[len(files)] = [read_rank_file(f) for f in files]
    return load_spec(path), points


@pytest.fixture(scope="module")
def runs(tmp_path_factory, jitterlab):
    tmp = tmp_path_factory.mktemp("dp")
    return {overlap: _run(jitterlab, tmp, overlap) for overlap in (False, True)}


def test_every_bucket_all_reduce_is_exact_on_every_rank(runs):
    for overlap, (_, points) in runs.items():
        assert sorted(points) == [1, 2]
        for n, ranks in points.items():
            for cols, meta in ranks:
                assert meta["wrong"] == [0, 0, 0, 0], (overlap, n, meta["wrong"])
                sites = cols["site"] != STEP_SITE
                assert np.bincount(cols["site"][sites]).tolist() == [STEPS] * 4
                assert set(cols["bytes"][sites].tolist()) == {1 << 20}

