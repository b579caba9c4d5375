"""``jitterlab bench``: run the collective benchmark on real processes and tabulate it.

The parent writes a Plan into the run directory, starts the ranks through the chosen
launcher (each in ``jitterlab worker``), waits within the timeout, then merges every
rank's records file into one row per size.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from collectives import microbench
from collectives.timing import read_rank_file
from jitter_models.errors import BadInput
from launch.plan import Plan
from launch.supervise import Launch, run_plan

from .atomic import write_text_atomic
from .csv_cells import csv_text

ROW_KEYS = ("coll", "algorithm", "size_bytes", "min_us", "p50_us", "p90_us", "p99_us",
            "p999_us", "max_us", "mean_us", "algbw_gbps", "busbw_gbps", "skew_us",
            "hop_delay_us", "wrong")


def default_out_dir() -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return str(Path("runs") / "bench" / f"{stamp}-{uuid.uuid4().hex[:6]}")


def run_bench(plan: Plan, *, launcher: str, nproc: int) -> dict[str, Any]:
    """Run ``plan`` on ``nproc`` ranks; the rows and the run's metadata."""
    out = Path(plan.out_dir)
    plan_path = out / "plan.json"
    if plan_path.exists() or any(out.glob("rank-*.parquet")):
        # Never mix two runs' records, and never delete a finished run's.
        raise BadInput(f"out: {str(out)!r} already holds a run; choose another directory")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(plan_path, plan.to_json() + "\n")
    run_plan(plan_path, Launch(launcher=launcher, nproc=nproc, timeout_s=plan.timeout_s))
    tables, metas = [], []
    for rank in range(nproc):
        columns, meta = read_rank_file(plan.rank_file(rank))
        tables.append(columns)
        metas.append(meta)
    offsets = metas  # each rank's clock metadata: offsets interpolated in time
    rows = microbench.summarize(tables, colls=plan.params["colls"], algorithms=plan.algorithms,
                                world_size=nproc,
                                offsets_ns=offsets, wrong=[m["wrong"] for m in metas])
    return {"rows": rows, "world_size": nproc, "launcher": launcher,
            "backend": metas[0]["backend"], "device": metas[0]["device"],
            "injector": metas[0].get("injector"),
            "hosts": sorted({m["hostname"] for m in metas}), "plan": plan.as_dict(),
            # draws above the maximum delay (one hour), clipped to it, over all ranks
            "delays_clipped": sum(int(m.get("delays_clipped", 0)) for m in metas),
            "clock_offsets": [{"rank": m["rank"], "offset_ns": m.get("clock_offset_ns"),
                               "uncertainty_ns": m.get("clock_offset_uncertainty_ns")}
                              for m in metas],
            "definition": "per-iteration time = max over ranks of (t_done - t_start), "
                          "after an untimed barrier; percentiles nearest-rank"}


def render_result(result: dict[str, Any]) -> str:
    plan = result["plan"]
    params = plan["params"]
    algos = plan.get("algorithms", ["native"])
    head = (f"# {','.join(params['colls'])} ({','.join(algos)}) {plan['dtype']} "
            f"redop={params['redop']}  world size "
            f"{result['world_size']} ({result['launcher']}, {result['backend']} on "
            f"{result['device']}, hosts: {', '.join(result['hosts'])})  iters "
            f"{params['iters']} warmup {params['warmup']}  jitter: {plan['jitter'] or 'none'}")
    note = ("# time per iteration = max over ranks of (t_done - t_start), start after an "
            "untimed barrier; percentiles nearest-rank; bandwidths from the mean")
    if result["world_size"] == 1:  # nccl-tests prints busbw 0 here; we print n/a
        note += " (n/a at world size 1: no bytes cross between ranks)"
    lines = [head, note, microbench.render(result["rows"])]
    from collectives.inject import SLEEP_ONLY

    if SLEEP_ONLY in (result.get("injector") or ""):
        lines.append("# more ranks than cores on a host: injected delays only sleep (the "
                     "OS overshoot, ~70 us here, counts as achieved delay) and Open MPI "
                     "ranks yield when idle; times include the scheduler's share")
    if plan.get("record_hops"):
        lines.append(f"# one row per message of the explicit algorithms: "
                     f"{plan['out_dir']}/hops-NNNNN.parquet (collectives.explicit.HopLog)")
    if result.get("delays_clipped"):
        lines.append(f"# {result['delays_clipped']} injected delays were clipped to the "
                     "maximum delay (one hour)")
    return "\n".join(lines)


def write_outputs(result: dict[str, Any], json_path: str | None, csv_path: str | None) -> None:
    if json_path:
        write_text_atomic(json_path, json.dumps(result, indent=2) + "\n")
    if csv_path:
        write_text_atomic(csv_path, csv_text(result["rows"], ROW_KEYS))
