"""GPU paths: their logic on the CPU, and the GPU runs themselves skipped with a reason
where CUDA is absent (always in CI)."""

from __future__ import annotations

import pytest
import torch

from collectives.inject import make_injector
from experiments.bench import run_bench
from launch.bootstrap import bootstrap, resolve_backend
from launch.context import RunContext
from launch.plan import Plan

CUDA = torch.cuda.is_available()
SINGLE = RunContext(rank=0, world_size=1, local_rank=0, node=0, ranks_per_node=1,
                    hostname="h", launcher="single")


@pytest.mark.skipif(CUDA, reason="checks the CPU-only behaviour")
def test_auto_picks_gloo_and_nccl_without_cuda_is_a_clear_error():
    assert resolve_backend("auto") == "gloo"
    with pytest.raises(ValueError, match=r"backend: 'nccl' needs CUDA, which this process "
                                         r"does not see"):
        bootstrap("nccl", SINGLE, timeout_s=5)


@pytest.mark.skipif(CUDA, reason="checks the CPU-only behaviour")
def test_stream_delays_need_a_gpu_and_are_not_faked_on_the_host():
    # A host delay is hidden when the host runs ahead of the GPU stream.
    with pytest.raises(ValueError, match=r"injector: 'cuda' needs a CUDA device, and this "
                                         r"process sees none"):
        make_injector("cuda")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (none here; CI never has one)")
def test_cuda_injector_delays_the_stream_not_the_host():
    inj = make_injector("cuda")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    inj.inject(0, 1000)  # compile and warm
    torch.cuda.synchronize()
    start.record()
    inj.inject(0, 500_000)
    end.record()
    torch.cuda.synchronize()
    assert 490 <= start.elapsed_time(end) * 1e3 <= 600


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (none here; CI never has one)")
def test_nccl_all_reduce_on_one_gpu(tmp_path):
    plan = Plan.build(workload="microbench", out_dir=str(tmp_path / "run"), backend="nccl",
                colls=("all_reduce",), sizes=(1024, 1 << 20), iters=10, warmup=2, check=True,
                timeout_s=120)
    result = run_bench(plan, launcher="local", nproc=1)
    assert result["device"].startswith("cuda") and all(r["wrong"] == 0 for r in result["rows"])

