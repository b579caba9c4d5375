"""``record_hops``: one row per message of an explicit algorithm, on real ranks (mpirun,
3 ranks, a ring all-reduce under link-scoped jitter): every send has its receive on the
peer, with the requested and achieved hop delay."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from collectives.timing import read_rank_file

JITTERLAB = str(Path(sys.executable).with_name("jitterlab"))
N, CALLS, DELAY_NS = 3, 4, 2_000_000  # (1 warm-up + 3 timed calls)
SIZES = 2  # 1 KiB and 4 KiB: two sites, each its own collective


def test_record_hops_writes_every_message_once_on_each_side(tmp_path):
    out = tmp_path / "run"
    res = subprocess.run(
        [JITTERLAB, "bench", "--launcher", "mpirun", "--nproc", str(N), "--backend", "mpi",
         "--algo", "ring", "-b", "1K", "-e", "4K", "-n", "3", "-w", "1",
         "--jitter", f"constant({DELAY_NS // 1000}us); scope=link", "--record-hops",
         "--out", str(out), "--json", str(tmp_path / "b.json")],
        capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "hops-NNNNN.parquet" in res.stdout and "hop_us" in res.stdout
    rows = {r: read_rank_file(out / f"hops-{r:05d}.parquet")[0] for r in range(N)}
    steps = 2 * (N - 1)  # ring: reduce-scatter then all-gather, one send and one receive each
    for r, t in rows.items():
        assert len(t["call"]) == SIZES * CALLS * steps * 2
        assert sorted(set(t["site"].tolist())) == [0, 1]
        send, recv = t["direction"] == 0, t["direction"] == 1
        assert np.all(t["delay_req_ns"][send] == DELAY_NS)
        assert np.all(t["delay_ns"][send] >= DELAY_NS)  # a send never departs early
        assert np.all(t["delay_ns"][recv] == 0)
        assert np.all(t["t_done_ns"] >= t["t_post_ns"])
        assert np.all(t["peer"][send] == (r + 1) % N) and np.all(t["peer"][recv] == (r - 1) % N)
        assert sorted(set(t["call"].tolist())) == list(range(CALLS))
    # Every send is some rank's receive: same op, site, call, step and bytes, peers swapped.
    def messages(direction: int, swap: bool) -> set[tuple[int, ...]]:
        out = set()
        for r, t in rows.items():
            for i in np.flatnonzero(t["direction"] == direction):
                ends = (int(t["peer"][i]), r) if swap else (r, int(t["peer"][i]))
                out.add((*(int(t[k][i]) for k in ("op", "site", "call", "step", "bytes")),
                         *ends))
        return out

    sends = messages(0, swap=False)
    assert sends == messages(1, swap=True) and len(sends) == N * SIZES * CALLS * steps
    # The table's hop column: a rank's sends' achieved delays summed per call (4 x 2 ms),
    # the mean over calls of the max over ranks; sleeps overshoot (~0.1 ms each here).
    for row in json.loads((tmp_path / "b.json").read_text())["rows"]:
        assert steps * DELAY_NS / 1e3 <= row["hop_delay_us"] < steps * DELAY_NS / 1e3 + 4000
