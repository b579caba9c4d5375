"""RunContext: launcher detection from env dicts, precedence of nested launchers, errors."""

import itertools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from launch import context
from launch.context import RunContext, node_of


def detect(**env: str) -> RunContext:
    return RunContext.detect(env, hostname="host-a")


def where(ctx: RunContext) -> tuple:
    return (ctx.launcher, ctx.rank, ctx.world_size, ctx.local_rank, ctx.ranks_per_node,
            ctx.node)


TORCHRUN = dict(RANK="5", WORLD_SIZE="8", LOCAL_RANK="1", LOCAL_WORLD_SIZE="4",
                GROUP_RANK="1", TORCHELASTIC_RUN_ID="job7")
OPENMPI = dict(OMPI_COMM_WORLD_RANK="6", OMPI_COMM_WORLD_SIZE="8",
               OMPI_COMM_WORLD_LOCAL_RANK="0", OMPI_COMM_WORLD_LOCAL_SIZE="2",
               OMPI_COMM_WORLD_NODE_RANK="0")
MPICH = dict(PMI_RANK="3", PMI_SIZE="4", MPI_LOCALRANKID="1", MPI_LOCALNRANKS="2")
SLURM_STEP = dict(SLURM_PROCID="5", SLURM_NTASKS="7", SLURM_LOCALID="1", SLURM_NODEID="1",
                  SLURM_STEP_TASKS_PER_NODE="4,3", SLURM_JOB_ID="99")
# What a process inside `salloc -N2 -n16` or an sbatch script sees without srun.
SLURM_ALLOCATION = dict(SLURM_JOB_ID="99", SLURM_NTASKS="16", SLURM_NNODES="2",
                        SLURM_TASKS_PER_NODE="8(x2)", SLURM_NODEID="0")


# --- each launcher alone --------------------------------------------------------------

def test_single_process_when_no_launcher_variables():
    ctx = detect(HOME="/root", PATH="/bin")
    assert where(ctx) == ("single", 0, 1, 0, 1, 0)
    assert ctx.hostname == "host-a"


def test_torchrun_reads_every_variable():
    assert where(detect(**TORCHRUN)) == ("torchrun", 5, 8, 1, 4, 1)


def test_torchrun_group_rank_is_trusted_over_block_mapping():
    # c10d rendezvous may order nodes freely: GROUP_RANK is the node, whatever the rank.
    ctx = detect(**{**TORCHRUN, "GROUP_RANK": "0"})
    assert ctx.node == 0


def test_torchrun_defaults_to_one_node_without_local_world_size_and_group_rank():
    ctx = detect(RANK="2", WORLD_SIZE="4", LOCAL_RANK="2")
    assert where(ctx) == ("torchrun", 2, 4, 2, 4, 0)


def test_torchrun_derives_node_from_local_world_size_without_group_rank():
    env = {k: v for k, v in TORCHRUN.items() if k != "GROUP_RANK"}
    assert detect(**env).node == 1


def test_openmpi_node_is_derived_not_taken_from_node_rank():
    # OMPI_COMM_WORLD_NODE_RANK is the rank on the node across jobs, not a node index.
    ctx = detect(**OPENMPI)
    assert where(ctx) == ("openmpi", 6, 8, 0, 2, 3)


def test_openmpi_without_local_size_assumes_one_node():
    ctx = detect(OMPI_COMM_WORLD_RANK="2", OMPI_COMM_WORLD_SIZE="3",
                 OMPI_COMM_WORLD_LOCAL_RANK="2")
    assert (ctx.ranks_per_node, ctx.node) == (3, 0)


def test_mpich_hydra():
    assert where(detect(**MPICH)) == ("mpich", 3, 4, 1, 2, 1)


def test_slurm_step_with_uneven_tasks_per_node():
    assert where(detect(**SLURM_STEP)) == ("slurm", 5, 7, 1, 3, 1)


@pytest.mark.parametrize("spec, node, count", [
    ("4", 0, 4), ("2(x3),1", 0, 2), ("2(x3),1", 2, 2), ("2(x3),1", 3, 1),
    ("1,5(x2)", 2, 5), (" 3(x2) ", 1, 3),
])
def test_slurm_tasks_per_node_lists(spec, node, count):
    ctx = detect(SLURM_PROCID=str(node), SLURM_NTASKS="16", SLURM_LOCALID="0",
                 SLURM_NODEID=str(node), SLURM_TASKS_PER_NODE=spec)
    assert ctx.ranks_per_node == count


def test_slurm_step_variables_win_over_job_variables():
    ctx = detect(**{**SLURM_STEP, "SLURM_STEP_NUM_TASKS": "6", "SLURM_NTASKS": "64",
                    "SLURM_STEP_TASKS_PER_NODE": "3(x2)", "SLURM_TASKS_PER_NODE": "32(x2)"})
    assert (ctx.world_size, ctx.ranks_per_node) == (6, 3)


def test_slurm_plain_ntasks_per_node_holds_for_every_node():
    ctx = detect(SLURM_PROCID="6", SLURM_NTASKS="8", SLURM_LOCALID="2", SLURM_NODEID="1",
                 SLURM_NTASKS_PER_NODE="4")
    assert (ctx.node, ctx.ranks_per_node) == (1, 4)


def test_slurm_without_tasks_per_node_assumes_one_node():
    ctx = detect(SLURM_PROCID="1", SLURM_NTASKS="2", SLURM_LOCALID="1", SLURM_NODEID="0")
    assert ctx.ranks_per_node == 2


# --- nesting and precedence -----------------------------------------------------------

def test_torchrun_under_srun_is_torchrun():
    # srun starts one torchrun agent per node; its SLURM_* describe the agents.
    ctx = detect(**TORCHRUN, SLURM_PROCID="1", SLURM_NTASKS="2", SLURM_LOCALID="0",
                 SLURM_NODEID="1", SLURM_TASKS_PER_NODE="1(x2)")
    assert where(ctx) == ("torchrun", 5, 8, 1, 4, 1)


def test_openmpi_inside_allocation_without_srun_step_is_openmpi():
    assert detect(**OPENMPI, **SLURM_ALLOCATION).launcher == "openmpi"


def test_openmpi_with_slurm_procid_is_openmpi():
    # mpirun starts its daemons with srun inside an allocation: ranks inherit SLURM_PROCID.
    ctx = detect(**OPENMPI, **SLURM_STEP)
    assert where(ctx) == ("openmpi", 6, 8, 0, 2, 3)


def test_hydra_with_slurm_procid_is_mpich():
    assert where(detect(**MPICH, **SLURM_STEP)) == ("mpich", 3, 4, 1, 2, 1)


def test_srun_pmi2_pmi_variables_without_hydra_are_slurm():
    # srun --mpi=pmi2 sets PMI_RANK/PMI_SIZE but no MPI_LOCALRANKID.
    ctx = detect(**SLURM_STEP, PMI_RANK="5", PMI_SIZE="7")
    assert where(ctx) == ("slurm", 5, 7, 1, 3, 1)


def test_allocation_alone_is_a_single_process():
    assert where(detect(**SLURM_ALLOCATION)) == ("single", 0, 1, 0, 1, 0)


def test_outer_launcher_contradictions_are_ignored():
    ctx = detect(**TORCHRUN, SLURM_PROCID="9", SLURM_NTASKS="2", OMPI_COMM_WORLD_SIZE="x")
    assert ctx.launcher == "torchrun"


def test_torchrun_beats_openmpi():
    assert detect(**TORCHRUN, **OPENMPI).rank == 5


# --- contradictions within the chosen launcher ----------------------------------------

@pytest.mark.parametrize("env, message", [
    (dict(RANK="5", WORLD_SIZE="4", LOCAL_RANK="0"),
     "torchrun: RANK=5 is not < WORLD_SIZE=4"),
    (dict(RANK="abc", WORLD_SIZE="4", LOCAL_RANK="0"),
     "torchrun: RANK='abc' is not a non-negative integer"),
    (dict(RANK="-1", WORLD_SIZE="4", LOCAL_RANK="0"),
     "torchrun: RANK='-1' is not a non-negative integer"),
    (dict(RANK="", WORLD_SIZE="4", LOCAL_RANK="0"),
     "torchrun: RANK='' is not a non-negative integer"),
    (dict(RANK="1", WORLD_SIZE="4"), "torchrun: LOCAL_RANK is missing while RANK=1 is set"),
    (dict(RANK="1", LOCAL_RANK="1"), "torchrun: WORLD_SIZE is missing while RANK=1 is set"),
    (dict(TORCHELASTIC_RUN_ID="x"), "torchrun: RANK is missing while TORCHELASTIC_RUN_ID is set"),
    (dict(RANK="0", WORLD_SIZE="0", LOCAL_RANK="0"), "torchrun: WORLD_SIZE=0 is not >= 1"),
    (dict(RANK="3", WORLD_SIZE="4", LOCAL_RANK="2", LOCAL_WORLD_SIZE="2"),
     "torchrun: LOCAL_RANK=2 is not < LOCAL_WORLD_SIZE=2"),
    (dict(RANK="1", WORLD_SIZE="4", LOCAL_RANK="1", LOCAL_WORLD_SIZE="8"),
     "torchrun: LOCAL_WORLD_SIZE=8 is not in [1, WORLD_SIZE=4]"),
    (dict(RANK="1", WORLD_SIZE="4", LOCAL_RANK="0", LOCAL_WORLD_SIZE="0"),
     "torchrun: LOCAL_WORLD_SIZE=0 is not in [1, WORLD_SIZE=4]"),
    (dict(RANK="1", WORLD_SIZE="4", LOCAL_RANK="1", GROUP_RANK="x"),
     "torchrun: GROUP_RANK='x' is not a non-negative integer"),
    (dict(OMPI_COMM_WORLD_RANK="1", OMPI_COMM_WORLD_SIZE="4"),
     "openmpi: OMPI_COMM_WORLD_LOCAL_RANK is missing while OMPI_COMM_WORLD_RANK=1 is set"),
    (dict(PMI_RANK="1", PMI_SIZE="4"),
     "mpich: MPI_LOCALRANKID is missing while PMI_RANK=1 is set"),
    (dict(PMI_RANK="4", PMI_SIZE="4", MPI_LOCALRANKID="0"),
     "mpich: PMI_RANK=4 is not < PMI_SIZE=4"),
    (dict(SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0"),
     "slurm: SLURM_STEP_NUM_TASKS or SLURM_NTASKS or SLURM_NPROCS is missing while "
     "SLURM_PROCID=0 is set"),
    (dict(SLURM_PROCID="0", SLURM_NTASKS="2", SLURM_LOCALID="0"),
     "slurm: SLURM_NODEID is missing while SLURM_PROCID=0 is set"),
    (dict(SLURM_PROCID="3", SLURM_NTASKS="4", SLURM_LOCALID="1", SLURM_NODEID="1",
          SLURM_TASKS_PER_NODE="4"),
     "slurm: SLURM_NODEID=1 is not < the 1 nodes of SLURM_TASKS_PER_NODE='4'"),
    (dict(SLURM_PROCID="0", SLURM_NTASKS="4", SLURM_LOCALID="0", SLURM_NODEID="0",
          SLURM_TASKS_PER_NODE="2(x2"),
     "slurm: SLURM_TASKS_PER_NODE='2(x2' is not a tasks-per-node list such as '4(x2),3'"),
    (dict(SLURM_PROCID="3", SLURM_NTASKS="4", SLURM_LOCALID="2", SLURM_NODEID="1",
          SLURM_STEP_TASKS_PER_NODE="2(x2)"),
     "slurm: SLURM_LOCALID=2 is not < SLURM_STEP_TASKS_PER_NODE=2"),
])
def test_contradictions_name_the_variable_and_value(env, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        detect(**env)


def test_round_robin_mapping_is_refused_rather_than_given_a_wrong_node():
    # mpirun --map-by node on 2 nodes: rank 1 is the first rank of node 1.
    with pytest.raises(ValueError, match=re.escape(
            "openmpi: no node index variable, and OMPI_COMM_WORLD_RANK=1, "
            "OMPI_COMM_WORLD_LOCAL_RANK=0, OMPI_COMM_WORLD_LOCAL_SIZE=2, "
            "OMPI_COMM_WORLD_SIZE=4 do not fit block mapping")):
        detect(OMPI_COMM_WORLD_RANK="1", OMPI_COMM_WORLD_SIZE="4",
               OMPI_COMM_WORLD_LOCAL_RANK="0", OMPI_COMM_WORLD_LOCAL_SIZE="2")


def test_uneven_nodes_without_node_variable_are_refused():
    # 6 ranks as 4 + 2: node 0's ranks see a local size that does not divide the world.
    with pytest.raises(ValueError, match="do not fit block mapping"):
        detect(PMI_RANK="1", PMI_SIZE="6", MPI_LOCALRANKID="1", MPI_LOCALNRANKS="4")


def test_one_node_accepts_local_ranks_in_any_order():
    # Open MPI, oversubscribed, numbers a node's ranks in its own order (seen here with
    # mpirun -np 4 on 2 cores: world rank 1 had local rank 2). One node: node 0 for all.
    ctx = detect(OMPI_COMM_WORLD_RANK="1", OMPI_COMM_WORLD_SIZE="4",
                 OMPI_COMM_WORLD_LOCAL_RANK="2", OMPI_COMM_WORLD_LOCAL_SIZE="4")
    assert (ctx.rank, ctx.local_rank, ctx.node, ctx.ranks_per_node) == (1, 2, 0, 4)
    # A missing local size means one node too.
    ctx = detect(RANK="5", WORLD_SIZE="8", LOCAL_RANK="1")
    assert (ctx.node, ctx.ranks_per_node) == (0, 8)


# --- properties over whole layouts ----------------------------------------------------

@given(nodes=st.integers(1, 6), per_node=st.integers(1, 5))
def test_openmpi_block_layout_gives_every_rank_its_node(nodes, per_node):
    world = nodes * per_node
    for rank in range(world):
        ctx = detect(OMPI_COMM_WORLD_RANK=str(rank), OMPI_COMM_WORLD_SIZE=str(world),
                     OMPI_COMM_WORLD_LOCAL_RANK=str(rank % per_node),
                     OMPI_COMM_WORLD_LOCAL_SIZE=str(per_node))
        assert (ctx.node, ctx.local_rank) == (rank // per_node, rank % per_node)


def _compress(counts: list[int]) -> str:
    """Slurm's compressed form, written independently of the parser: runs of equal counts."""
    groups = [(c, len(list(g))) for c, g in itertools.groupby(counts)]
    return ",".join(f"{c}(x{n})" if n > 1 else str(c) for c, n in groups)


@given(counts=st.lists(st.integers(1, 4), min_size=1, max_size=8))
def test_slurm_uneven_block_layout_gives_every_rank_its_node_size(counts):
    world, spec = sum(counts), _compress(counts)
    rank = 0
    for node, count in enumerate(counts):
        for local in range(count):
            ctx = detect(SLURM_PROCID=str(rank), SLURM_NTASKS=str(world),
                         SLURM_LOCALID=str(local), SLURM_NODEID=str(node),
                         SLURM_STEP_TASKS_PER_NODE=spec)
            assert (ctx.node, ctx.ranks_per_node, ctx.local_rank) == (node, count, local)
            rank += 1


# --- defaults from the process --------------------------------------------------------

_LAUNCHER_VAR = re.compile(
    r"(RANK|WORLD_SIZE|LOCAL_RANK|LOCAL_WORLD_SIZE|GROUP_RANK|TORCHELASTIC_.*|OMPI_.*|PMI_.*"
    r"|MPI_LOCAL.*|SLURM_.*)")


@pytest.fixture
def clean_env(monkeypatch):
    for name in list(os.environ):
        if _LAUNCHER_VAR.fullmatch(name):
            monkeypatch.delenv(name)
    return monkeypatch


def test_detect_reads_os_environ_and_socket_hostname(clean_env):
    for name, value in MPICH.items():
        clean_env.setenv(name, value)
    clean_env.setattr(context.socket, "gethostname", lambda: "node-17")
    ctx = RunContext.detect()
    assert where(ctx) == ("mpich", 3, 4, 1, 2, 1)
    assert ctx.hostname == "node-17"


def test_detect_in_a_clean_environment_is_single(clean_env):
    assert RunContext.detect(hostname="h").launcher == "single"


# --- the dataclass itself -------------------------------------------------------------

GOOD = dict(rank=5, world_size=8, local_rank=1, node=1, ranks_per_node=4, hostname="h",
            launcher="torchrun")


@pytest.mark.parametrize("change, message", [
    (dict(rank=8), "rank=8 is not in [0, world_size=8)"),
    (dict(rank=-1), "rank=-1 is not in [0, world_size=8)"),
    (dict(world_size=0, rank=0, local_rank=0, ranks_per_node=1),
     "world_size=0 is not >= 1"),
    (dict(ranks_per_node=9), "ranks_per_node=9 is not in [1, world_size=8]"),
    (dict(local_rank=4), "local_rank=4 is not in [0, ranks_per_node=4)"),
    (dict(node=-1), "node=-1 is not >= 0"),
    (dict(rank=True), "rank must be an integer, got True"),
    (dict(node=1.0), "node must be an integer, got 1.0"),
    (dict(hostname=""), "hostname must be a non-empty string"),
    (dict(launcher="pbs"), "launcher='pbs' is not one of torchrun, openmpi"),
    (dict(launcher="single"), "launcher='single' needs world_size=1, got 8"),
])
def test_run_context_validation(change, message):
    with pytest.raises(ValueError, match=re.escape(f"RunContext: {message}")):
        RunContext(**{**GOOD, **change})


def test_run_context_is_frozen_and_keyword_only():
    ctx = RunContext(**GOOD)
    with pytest.raises(AttributeError):
        ctx.rank = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        RunContext(5, 8, 1, 1, 4, "h", "torchrun")  # type: ignore[misc]


@pytest.mark.parametrize("rank, per_node, node", [(0, 1, 0), (7, 4, 1), (8, 4, 2), (3, 8, 0)])
def test_node_of(rank, per_node, node):
    assert node_of(rank, per_node) == node


@pytest.mark.parametrize("rank, per_node, message", [
    (-1, 4, "node_of: rank must be an integer >= 0, got -1"),
    (1, 0, "node_of: ranks_per_node must be an integer >= 1, got 0"),
    (True, 4, "node_of: rank must be an integer >= 0, got True"),
])
def test_node_of_rejects(rank, per_node, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        node_of(rank, per_node)


def test_a_local_run_started_inside_a_launchers_rank_is_a_world_of_its_own():
    """An agent in an srun task (or an mpirun rank) starts a one-rank point: the worker
    must not take the agent's place in the outer world."""
    from launch.context import single_process_env

    outer = {"SLURM_JOB_ID": "4", "SLURM_PROCID": "1", "SLURM_NTASKS": "2",
             "SLURM_STEP_NUM_TASKS": "2", "SLURM_LOCALID": "0", "SLURM_NODEID": "1",
             "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "PMI_FD": "5", "PMIX_RANK": "1",
             "OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "RANK": "1",
             "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "GROUP_RANK": "1",
             "TORCHELASTIC_RUN_ID": "x", "MASTER_ADDR": "h0", "PATH": "/usr/bin",
             "GLOO_SOCKET_IFNAME": "eth0"}
    assert RunContext.detect(outer).world_size == 2
    env = single_process_env(outer)
    assert env == {"SLURM_JOB_ID": "4", "PATH": "/usr/bin", "GLOO_SOCKET_IFNAME": "eth0"}
    ctx = RunContext.detect(env, hostname="h")
    assert (ctx.launcher, ctx.rank, ctx.world_size) == ("single", 0, 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
@pytest.mark.parametrize("under_torchrun", [True, False])
def test_a_worker_under_torchrun_dies_with_it(tmp_path, under_torchrun):
    """A parent standing in for torchrun (a script called torchrun) starts a child that
    calls die_with_torchrun and sleeps, then exits: the child must go with it under
    torchrun, and only then."""
    pid, state = _child_of_a_parent(tmp_path, "torchrun", under_torchrun)
    assert state == "ready"
    deadline = time.monotonic() + (10 if under_torchrun else 1)  # death is immediate
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert _alive(pid) != under_torchrun
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_an_open_mpi_rank_dies_with_its_launcher(tmp_path):
    """Open MPI's variables, a parent standing in for prterun that exits: the rank goes
    with it (a killed mpirun left its ranks running, orphaned, before)."""
    pid, state = _child_of_a_parent(tmp_path, "prterun", False,
                                    extra={"OMPI_COMM_WORLD_RANK": "0"})
    assert state == "ready"
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert not _alive(pid)
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_a_worker_whose_torchrun_is_already_gone_ends_at_once(tmp_path):
    """torchrun's variables but another parent (init or a subreaper adopted the worker
    before it could ask to die with torchrun): it ends before doing anything."""
    pid, state = _child_of_a_parent(tmp_path, "subreaper", True)
    assert state == "" and not _alive(pid)


def _child_of_a_parent(tmp_path: Path, parent_name: str, torchrun_env: bool,
                       extra: dict[str, str] | None = None) -> tuple[int, str]:
    child = ("import sys, time; sys.path.insert(0, sys.argv[1]); "
             "from launch.context import die_with_torchrun; die_with_torchrun(); "
             "print('ready', flush=True); time.sleep(30)")
    root = str(Path(__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items()
           if k not in ("TORCHELASTIC_RUN_ID", "OMPI_COMM_WORLD_RANK")} | (extra or {})
    if torchrun_env:
        env["TORCHELASTIC_RUN_ID"] = "test"
    parent = tmp_path / parent_name
    parent.write_text("import subprocess, sys\n"
                      "p = subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2]], "
                      "stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)\n"
                      "print(p.pid, p.stdout.readline().strip(), flush=True)\n")
    out = subprocess.run([sys.executable, str(parent), child, root], env=env,
                         capture_output=True, text=True, timeout=60)
    fields = out.stdout.split()
    time.sleep(0.2)
    return int(fields[0]), (fields[1] if len(fields) > 1 else "")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"
