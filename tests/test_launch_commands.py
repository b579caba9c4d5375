"""Command builders: exact argv for each launcher and flavour, quoting, every validation."""

import re
import shlex
from pathlib import Path

import pytest

from launch import commands
from launch.commands import (
    loopback_namespace_cmd,
    mpirun_cmd,
    needs_oversubscribe,
    running_as_root,
    sbatch_script,
    srun_cmd,
    torchrun_cmd,
)

WORKER = ["jitterlab", "worker", "plan.json"]


def raises(message: str):
    return pytest.raises(ValueError, match=re.escape(message))


# --- torchrun -------------------------------------------------------------------------

def test_torchrun_standalone():
    assert torchrun_cmd(WORKER, nproc_per_node=4) == [
        "torchrun", "--standalone", "--nnodes", "1", "--nproc-per-node", "4",
        "--no-python", "jitterlab", "worker", "plan.json"]


def test_torchrun_static_multi_node():
    assert torchrun_cmd(WORKER, nproc_per_node=8, nnodes=2, node_rank=1, rdzv="static",
                        master_addr="10.0.0.1", master_port=29500) == [
        "torchrun", "--nnodes", "2", "--rdzv-backend", "static", "--node-rank", "1",
        "--master-addr", "10.0.0.1", "--master-port", "29500", "--nproc-per-node", "8",
        "--no-python", *WORKER]


def test_torchrun_c10d_with_python_and_extra_flags():
    assert torchrun_cmd(WORKER, nproc_per_node=2, nnodes=3, rdzv="c10d",
                        rdzv_endpoint="head:29400", rdzv_id="point-ab12",
                        python="/opt/venv/bin/python", extra=["--max-restarts", "0"]) == [
        "/opt/venv/bin/python", "-m", "torch.distributed.run", "--nnodes", "3",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", "head:29400", "--rdzv-id", "point-ab12",
        "--nproc-per-node", "2", "--max-restarts", "0", "--no-python", *WORKER]


def test_torchrun_flags_parse_with_torchrun_itself():
    # The installed torchrun's own parser: every flag we emit is spelled as it accepts.
    run = pytest.importorskip("torch.distributed.run")
    cmd = torchrun_cmd(WORKER, nproc_per_node=8, nnodes=2, node_rank=1, rdzv="static",
                       master_addr="10.0.0.1", master_port=29501)
    args = run.get_args_parser().parse_args(cmd[1:])
    assert (args.nnodes, args.nproc_per_node, args.node_rank, args.master_addr,
            args.master_port, args.rdzv_backend, args.no_python) == (
        "2", "8", 1, "10.0.0.1", 29501, "static", True)
    assert [args.training_script, *args.training_script_args] == WORKER
    args = run.get_args_parser().parse_args(torchrun_cmd(WORKER, nproc_per_node=3)[1:])
    assert (args.standalone, args.nproc_per_node, args.nnodes) == (True, "3", "1")


FILE_RDZV = dict(rdzv="file", rdzv_endpoint="/runs/my point/torchrun-rendezvous",
                 rdzv_id="ab12")


def test_torchrun_file_rendezvous_opens_no_agent_socket():
    # The agent shares no TCP store (env var, through env(1)), keeps its rendezvous in a
    # file and names loopback as the workers' MASTER_ADDR.
    assert torchrun_cmd(WORKER, nproc_per_node=2, torchrun="/venv/bin/torchrun",
                        **FILE_RDZV) == [
        "env", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1", "/venv/bin/torchrun",
        "--nnodes", "1", "--rdzv-backend", "c10d",
        "--rdzv-endpoint", "/runs/my point/torchrun-rendezvous", "--rdzv-conf",
        "store_type=file", "--rdzv-id", "ab12", "--local-addr", "127.0.0.1",
        "--nproc-per-node", "2", "--no-python", *WORKER]
    assert torchrun_cmd(WORKER, nproc_per_node=2, python="/venv/bin/python",
                        **FILE_RDZV)[:5] == [
        "env", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1", "/venv/bin/python", "-m",
        "torch.distributed.run"]


def test_torchrun_file_rendezvous_parses_with_torchrun_and_its_store_is_a_file():
    run = pytest.importorskip("torch.distributed.run")
    cmd = torchrun_cmd(WORKER, nproc_per_node=2, **FILE_RDZV)
    args = run.get_args_parser().parse_args(cmd[cmd.index("torchrun") + 1:])
    assert (args.standalone, args.nnodes, args.rdzv_backend, args.rdzv_endpoint,
            args.rdzv_conf, args.rdzv_id, args.local_addr) == (
        False, "1", "c10d", "/runs/my point/torchrun-rendezvous", "store_type=file", "ab12",
        "127.0.0.1")


@pytest.mark.parametrize("kwargs, message", [
    (dict(FILE_RDZV, nnodes=2), "rdzv='file' runs on one node, got nnodes=2"),
    (dict(rdzv="file", rdzv_id="x"), "rdzv='file' needs rdzv_endpoint (a path) and "
                                     "rdzv_id, got rdzv_endpoint=None, rdzv_id='x'"),
    (dict(FILE_RDZV, master_port=29500), "master_port=29500 is not used with rdzv='file'"),
    (dict(FILE_RDZV, rdzv_id="a b"),
     "rdzv_id must be a non-empty string without whitespace, got 'a b'"),
    (dict(python="/p", torchrun="/t"), "give python or torchrun, not both"),
    (dict(torchrun=""), "torchrun must be a non-empty string, got ''"),
])
def test_torchrun_file_rendezvous_rejects(kwargs, message):
    with raises(message):
        torchrun_cmd(WORKER, nproc_per_node=2, **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(nproc_per_node=0), "nproc_per_node must be an integer >= 1, got 0"),
    (dict(nproc_per_node=True), "nproc_per_node must be an integer >= 1, got True"),
    (dict(nproc_per_node=2, nnodes=0), "nnodes must be an integer >= 1, got 0"),
    (dict(nproc_per_node=2, node_rank=-1), "node_rank must be an integer >= 0, got -1"),
    (dict(nproc_per_node=2, nnodes=2), "rdzv='standalone' runs on one node, got nnodes=2"),
    (dict(nproc_per_node=2, rdzv="etcd"),
     "rdzv='etcd' is not one of standalone, static, c10d, file"),
    (dict(nproc_per_node=2, master_port=29500),
     "master_port=29500 is not used with rdzv='standalone'"),
    (dict(nproc_per_node=2, node_rank=1), "node_rank=1 is only used with rdzv='static'"),
    (dict(nproc_per_node=2, rdzv="static", master_addr="a"),
     "rdzv='static' needs master_addr and master_port, got master_addr='a', "
     "master_port=None"),
    (dict(nproc_per_node=2, rdzv="static", master_addr="a", master_port=70000),
     "master_port must be an integer in [1, 65535], got 70000"),
    (dict(nproc_per_node=2, rdzv="static", nnodes=2, node_rank=2, master_addr="a",
          master_port=1), "node_rank=2 is not < nnodes=2"),
    (dict(nproc_per_node=2, rdzv="static", master_addr="a", master_port=1, rdzv_id="x"),
     "rdzv_id='x' is not used with rdzv='static'"),
    (dict(nproc_per_node=2, rdzv="c10d", rdzv_endpoint="h:1"),
     "rdzv='c10d' needs rdzv_endpoint and rdzv_id, got rdzv_endpoint='h:1', rdzv_id=None"),
    (dict(nproc_per_node=2, rdzv="c10d", rdzv_endpoint="h:1", rdzv_id="x",
          master_addr="a"), "master_addr='a' is not used with rdzv='c10d'"),
    (dict(nproc_per_node=2, rdzv="c10d", rdzv_endpoint="h 1", rdzv_id="x"),
     "rdzv_endpoint must be a non-empty string without whitespace, got 'h 1'"),
    (dict(nproc_per_node=2, python=""), "python must be a non-empty string, got ''"),
    (dict(nproc_per_node=2, extra="--max-restarts"),
     "extra must be a sequence of strings, got '--max-restarts'"),
])
def test_torchrun_rejects(kwargs, message):
    with raises(message):
        torchrun_cmd(WORKER, **kwargs)


@pytest.mark.parametrize("argv, message", [
    ([], "worker_argv must not be empty"),
    ("jitterlab worker", "worker_argv must be a sequence of strings, got 'jitterlab worker'"),
    (["jitterlab", 3], "worker_argv must be a sequence of strings"),
    (["", "x"], "worker_argv[0] (the program) must not be empty"),
])
def test_every_builder_rejects_a_bad_worker_argv(argv, message):
    for build in (lambda: torchrun_cmd(argv, nproc_per_node=1),
                  lambda: mpirun_cmd(argv, np=1), lambda: srun_cmd(argv, ntasks=1),
                  lambda: sbatch_script(argv, job_name="j", nodes=1, ntasks_per_node=1)):
        with raises(message):
            build()


# --- mpirun ---------------------------------------------------------------------------

def test_mpirun_openmpi_every_flag():
    assert mpirun_cmd(WORKER, np=4, hosts=["a:2", "b:2"], map_by="slot", as_root=True,
                      oversubscribe=True, env={"OMP_NUM_THREADS": "1", "X": "a b=c"}) == [
        "mpirun", "-np", "4", "--allow-run-as-root", "--oversubscribe", "--mca",
        "mpi_yield_when_idle", "1", "--host", "a:2,b:2",
        "--map-by", "slot", "-x", "OMP_NUM_THREADS=1", "-x", "X=a b=c", *WORKER]


def test_mpirun_openmpi_minimal_with_hostfile_path():
    assert mpirun_cmd(WORKER, np=2, hostfile=Path("/tmp/my hosts"),
                      mpirun="/opt/ompi/bin/mpirun") == [
        "/opt/ompi/bin/mpirun", "-np", "2", "--hostfile", "/tmp/my hosts", *WORKER]


def test_mpirun_mpich_every_flag_and_ignores_root_and_oversubscribe():
    assert mpirun_cmd(WORKER, np=4, flavour="mpich", hosts=["a:2", "b:2"], map_by="core",
                      as_root=True, oversubscribe=True, env={"OMP_NUM_THREADS": "1"},
                      mpirun="mpiexec") == [
        "mpiexec", "-n", "4", "-hosts", "a:2,b:2", "-map-by", "core",
        "-genv", "OMP_NUM_THREADS", "1", *WORKER]


def test_mpirun_openmpi_shared_memory_only():
    # ob1 over self and sm: no TCP BTL (it listens on every interface), no UCX or OFI.
    assert mpirun_cmd(WORKER, np=2, as_root=True, shared_memory=True) == [
        "mpirun", "-np", "2", "--allow-run-as-root", "--mca", "pml", "ob1",
        "--mca", "btl", "self,sm", *WORKER]


def test_loopback_namespace_cmd_runs_netns_py_isolated():
    cmd = loopback_namespace_cmd(["mpirun", "-np", "2", *WORKER], python="/venv/bin/python")
    netns = Path(commands.__file__).with_name("netns.py")
    assert cmd == ["/venv/bin/python", "-I", str(netns), "mpirun", "-np", "2", *WORKER]
    assert netns.is_file()
    with raises("python must be a non-empty string, got ''"):
        loopback_namespace_cmd(WORKER, python="")
    with raises("worker_argv must not be empty"):
        loopback_namespace_cmd([], python="/venv/bin/python")


def test_launch_argv_keeps_one_node_runs_on_loopback(monkeypatch):
    from launch import supervise

    monkeypatch.setattr(supervise, "_beside_python", lambda name: f"/venv/bin/{name}")
    monkeypatch.setattr(supervise, "mpirun_flavour", lambda mpirun: "openmpi")
    monkeypatch.setattr(supervise, "running_as_root", lambda: False)
    monkeypatch.setattr(supervise, "needs_oversubscribe", lambda np: False)
    monkeypatch.setattr(supervise.sys, "executable", "/venv/bin/python")
    worker = ["/venv/bin/jitterlab", "worker", "/runs/p/plan.json"]
    cmd = supervise.launch_argv("torchrun", 2, worker)
    assert cmd[:3] == ["env", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1", "/venv/bin/torchrun"]
    at = cmd.index("--rdzv-endpoint")
    assert cmd[at:at + 4] == ["--rdzv-endpoint", "/runs/p/torchrun-rendezvous",
                              "--rdzv-conf", "store_type=file"]
    assert cmd[-len(worker):] == worker
    cmd = supervise.launch_argv("mpirun", 2, worker)
    assert cmd == ["/venv/bin/python", "-I", str(Path(commands.__file__).with_name("netns.py")),
                   "/venv/bin/mpirun", "-np", "2", "--mca", "pml", "ob1", "--mca", "btl",
                   "self,sm", *worker]
    monkeypatch.setattr(supervise, "mpirun_flavour", lambda mpirun: "mpich")
    assert supervise.launch_argv("mpirun", 2, worker) == [
        "/venv/bin/python", "-I", str(Path(commands.__file__).with_name("netns.py")),
        "/venv/bin/mpirun", "-n", "2", *worker]


def test_mpirun_mpich_hostfile():
    assert mpirun_cmd(WORKER, np=8, flavour="mpich", hostfile="hosts.txt") == [
        "mpirun", "-n", "8", "-f", "hosts.txt", *WORKER]


@pytest.mark.parametrize("kwargs, message", [
    (dict(np=0), "np must be an integer >= 1, got 0"),
    (dict(np=2, flavour="intel"), "flavour='intel' is not one of openmpi, mpich"),
    (dict(np=2, hostfile="h", hosts=["a"]), "give hostfile or hosts, not both"),
    (dict(np=2, hostfile=""), "hostfile must be a non-empty string, got ''"),
    (dict(np=2, hosts=[]), "hosts must not be empty"),
    (dict(np=2, hosts="a,b"), "hosts must be a sequence of strings, got 'a,b'"),
    (dict(np=2, hosts=["a,b"]), "hosts: one host per item, got 'a,b'"),
    (dict(np=2, hosts=["a", ""]), "hosts item must be a non-empty string without whitespace"),
    (dict(np=2, map_by=""), "map_by must be a non-empty string without whitespace, got ''"),
    (dict(np=2, as_root=None), "as_root must be a bool, got None"),
    (dict(np=2, oversubscribe="yes"), "oversubscribe must be a bool, got 'yes'"),
    (dict(np=2, shared_memory=1), "shared_memory must be a bool, got 1"),
    (dict(np=2, flavour="mpich", shared_memory=True), "shared_memory: only for Open MPI"),
    (dict(np=2, env={"1BAD": "x"}), "env: '1BAD' is not an environment variable name"),
    (dict(np=2, env={"A=B": "x"}), "env: 'A=B' is not an environment variable name"),
    (dict(np=2, env={"A": 1}), "env: A=1 is not a string"),
    (dict(np=2, mpirun=""), "mpirun must be a non-empty string, got ''"),
])
def test_mpirun_rejects(kwargs, message):
    with raises(message):
        mpirun_cmd(WORKER, **kwargs)


def test_needs_oversubscribe_rule():
    assert needs_oversubscribe(5, cores=4) is True
    assert needs_oversubscribe(4, cores=4) is False


def test_needs_oversubscribe_defaults_to_cpu_count(monkeypatch):
    monkeypatch.setattr(commands.os, "cpu_count", lambda: 3)
    assert (needs_oversubscribe(3), needs_oversubscribe(4)) == (False, True)
    monkeypatch.setattr(commands.os, "cpu_count", lambda: None)  # unknown: assume 1
    assert needs_oversubscribe(2) is True


@pytest.mark.parametrize("np, cores, message", [
    (0, 4, "np must be an integer >= 1, got 0"),
    (2, 0, "cores must be an integer >= 1, got 0"),
])
def test_needs_oversubscribe_rejects(np, cores, message):
    with raises(message):
        needs_oversubscribe(np, cores=cores)


@pytest.mark.parametrize("euid, root", [(0, True), (1000, False)])
def test_running_as_root(monkeypatch, euid, root):
    monkeypatch.setattr(commands.os, "geteuid", lambda: euid, raising=False)
    assert running_as_root() is root


# --- srun -----------------------------------------------------------------------------

def test_srun_every_flag():
    assert srun_cmd(WORKER, ntasks=8, nodes=2, ntasks_per_node=4, gpus_per_task=1,
                    cpu_bind="cores", extra=["--kill-on-bad-exit=1"]) == [
        "srun", "--ntasks=8", "--nodes=2", "--ntasks-per-node=4", "--gpus-per-task=1",
        "--cpu-bind=cores", "--kill-on-bad-exit=1", *WORKER]


def test_srun_minimal():
    assert srun_cmd(WORKER, ntasks=1) == ["srun", "--ntasks=1", *WORKER]


@pytest.mark.parametrize("kwargs, message", [
    (dict(ntasks=0), "ntasks must be an integer >= 1, got 0"),
    (dict(ntasks=2, nodes=0), "nodes must be an integer >= 1, got 0"),
    (dict(ntasks=2, nodes=3), "nodes=3 exceeds ntasks=2: a node would have no task"),
    (dict(ntasks=2, ntasks_per_node=0), "ntasks_per_node must be an integer >= 1, got 0"),
    (dict(ntasks=9, nodes=2, ntasks_per_node=4),
     "ntasks=9 exceeds nodes=2 x ntasks_per_node=4"),
    (dict(ntasks=2, gpus_per_task=0), "gpus_per_task must be an integer >= 1, got 0"),
    (dict(ntasks=2, cpu_bind="map cpu"),
     "cpu_bind must be a non-empty string without whitespace, got 'map cpu'"),
    (dict(ntasks=2, extra=[1]), "extra must be a sequence of strings, got [1]"),
])
def test_srun_rejects(kwargs, message):
    with raises(message):
        srun_cmd(WORKER, **kwargs)


# --- sbatch ---------------------------------------------------------------------------

def test_sbatch_script_exact_text():
    script = sbatch_script(WORKER, job_name="tp-sweep", nodes=2, ntasks_per_node=4,
                           partition="gpu", gpus_per_node=4, output="runs/%j.out",
                           setup_lines=["source .venv/bin/activate"])
    assert script == (
        "#!/bin/bash\n"
        "#SBATCH --job-name=tp-sweep\n"
        "#SBATCH --nodes=2\n"
        "#SBATCH --ntasks-per-node=4\n"
        "#SBATCH --time=00:30:00\n"
        "#SBATCH --partition=gpu\n"
        "#SBATCH --gpus-per-node=4\n"
        "#SBATCH --output=runs/%j.out\n"
        "\n"
        "set -e\n"
        "source .venv/bin/activate\n"
        "srun --ntasks=8 --nodes=2 --ntasks-per-node=4 jitterlab worker plan.json\n")


def test_sbatch_srun_line_survives_shell_quoting():
    argv = ["jitterlab", "worker", "/runs/my spec/plan.json", "it's", "$HOME", "a;b"]
    script = sbatch_script(argv, job_name="j", nodes=1, ntasks_per_node=2,
                           time_limit="1-00:00:00")
    last = script.splitlines()[-1]
    assert shlex.split(last) == ["srun", "--ntasks=2", "--nodes=1", "--ntasks-per-node=2",
                                 *argv]
    assert "#SBATCH --time=1-00:00:00" in script.splitlines()


@pytest.mark.parametrize("time_limit", ["90", "30:00", "00:30:00", "2-12", "2-12:30",
                                        "2-12:30:00"])
def test_sbatch_accepts_slurm_time_formats(time_limit):
    script = sbatch_script(WORKER, job_name="j", nodes=1, ntasks_per_node=1,
                           time_limit=time_limit)
    assert f"#SBATCH --time={time_limit}\n" in script


@pytest.mark.parametrize("kwargs, message", [
    (dict(job_name="my job"), "job_name must be a non-empty string without whitespace"),
    (dict(job_name=""), "job_name must be a non-empty string without whitespace, got ''"),
    (dict(nodes=0), "nodes must be an integer >= 1, got 0"),
    (dict(ntasks_per_node=0), "ntasks_per_node must be an integer >= 1, got 0"),
    (dict(time_limit="30m"), "time_limit='30m' is not a Slurm time"),
    (dict(time_limit="1:2:3:4"), "time_limit='1:2:3:4' is not a Slurm time"),
    (dict(partition="a\nb"), "partition must be a non-empty string without whitespace"),
    (dict(gpus_per_node=0), "gpus_per_node must be an integer >= 1, got 0"),
    (dict(output="out dir/x"), "output must be a non-empty string without whitespace"),
    (dict(setup_lines="module load cuda"),
     "setup_lines must be a sequence of strings, got 'module load cuda'"),
])
def test_sbatch_rejects(kwargs, message):
    args = dict(job_name="j", nodes=1, ntasks_per_node=1) | kwargs
    with raises(message):
        sbatch_script(WORKER, **args)
