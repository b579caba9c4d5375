"""moe_decode on real ranks over MPI (mpirun, 1 and 2 ranks): every all-to-all's result is
checked exactly at every step (``check = true``: the dispatch blocks each rank receives
and the copies the combine returns, collectives/moe_decode.py), with the backend's own
alltoallv and with the pairwise pattern, and the records carry the uneven bytes that the
seeded routing gives each rank."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from collectives.moe_decode import MoEDecode, pair_counts
from collectives.timing import STEP_SITE, read_rank_file

STEPS, WARMUP, LAYERS, BATCH = 6, 2, 2, 3

SPEC = f"""
name = "moe"
workload = "moe_decode"
model = {{ preset = "mixtral-8x7b", layers = {LAYERS} }}
routing = "skewed"
routing_skew = 1.0
routing_seed = 4
check = true
batch = [{BATCH}]
dtype = "float32"
world_sizes = SIZES
algorithm = "ALGORITHM"
backend = "mpi"
launcher = "mpirun"
steps = {STEPS}
warmup = {WARMUP}
timeout_s = 120

[[jitter]]
name = "none"
dist = "constant(0s)"
"""


def _env() -> dict[str, str]:
    return {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
            "PYTHONWARNINGS": "ignore"}


@pytest.mark.parametrize("algorithm, sizes", [("native", [1, 2]), ("pairwise", [2])])
def test_all_to_alls_exact_on_real_ranks(tmp_path, jitterlab, algorithm, sizes):
    spec = tmp_path / "moe.toml"
    spec.write_text(SPEC.replace("SIZES", str(sizes)).replace("ALGORITHM", algorithm))
    # (``jitterlab``: the command in this process, conftest.py; the ranks are real)
    res = jitterlab("run", str(spec), "--out", str(tmp_path / "run"), env=_env())
    assert res.returncode == 0, res.stderr[-3000:]
    points = sorted((tmp_path / "run" / "points").iterdir())
    assert len(points) == len(sizes)
    work = MoEDecode()
    p = work.params({"model": {"preset": "mixtral-8x7b", "layers": LAYERS},
                     "routing": "skewed", "routing_seed": 4, "batch": BATCH})
    router = work.router(p)
    for point in points:
        summary = json.loads((point / "summary.json").read_text())
        n = summary["world_size"]
        assert summary["wrong"] == 0, summary  # every element of every all-to-all
        for rank in range(n):
            cols, meta = read_rank_file(point / f"rank-{rank:05d}.parquet")
            assert meta["wrong"] == [0, 0]
            sites = cols["site"] != STEP_SITE
            assert np.count_nonzero(sites) == STEPS * 2 * LAYERS
            # each record's bytes: this rank's copies to the other ranks, from the same
            # routing the simulator draws (step = recorded step + warm-up)
            for step, site, nbytes in zip(cols["step"][sites], cols["site"][sites],
                                          cols["bytes"][sites]):
                pairs, _ = pair_counts(router, int(step) + WARMUP, int(site) // 2, n, BATCH)
                mine = pairs[rank] if site % 2 == 0 else pairs[:, rank]
                assert nbytes == (mine.sum() - mine[rank]) * 4096 * 4
