"""A SLURM allocation seen from its batch script or salloc shell: its hosts (Slurm's
compressed host list), its resources per node, and the srun step that starts one task per
node in it. Pure functions of the environment and the arguments; nothing is started."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from jitter_models.errors import BadInput


def expand_hostlist(expr: str) -> list[str]:
    """Slurm's compressed host list, e.g. 'gpu[01-03,07],login1' -> gpu01, gpu02, gpu03,
    gpu07, login1 (zero padding kept; several bracket groups in one name multiply)."""
    if not isinstance(expr, str) or not expr.strip():
        raise BadInput(f"SLURM_JOB_NODELIST: empty host list {expr!r}")
    items, depth, start = [], 0, 0
    for i, c in enumerate(expr):
        depth += c == "["
        depth -= c == "]"
        if depth < 0 or depth > 1:
            raise BadInput(f"SLURM_JOB_NODELIST: unbalanced brackets in {expr!r}")
        if c == "," and depth == 0:
            items.append(expr[start:i])
            start = i + 1
    if depth:
        raise BadInput(f"SLURM_JOB_NODELIST: unbalanced brackets in {expr!r}")
    items.append(expr[start:])
    hosts: list[str] = []
    for item in items:
        hosts += _expand_one(item.strip(), expr)
    return hosts


def _expand_one(item: str, whole: str) -> list[str]:
    m = re.search(r"\[([^\]]*)\]", item)
    if not m:
        if not item:
            raise BadInput(f"SLURM_JOB_NODELIST: empty host name in {whole!r}")
        return [item]
    head, tail = item[:m.start()], item[m.end():]
    out = []
    for part in m.group(1).split(","):
        r = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", part.strip())
        if not r:
            raise BadInput(f"SLURM_JOB_NODELIST: bad range {part!r} in {whole!r}")
        lo, hi = r.group(1), r.group(2) or r.group(1)
        if int(hi) < int(lo):
            raise BadInput(f"SLURM_JOB_NODELIST: descending range {part!r} in {whole!r}")
        width = len(lo) if lo.startswith("0") else 0
        out += [f"{head}{i:0{width}d}" for i in range(int(lo), int(hi) + 1)]
    return [h for name in out for h in _expand_one(name + tail, whole)]


@dataclass(frozen=True)
class SlurmJob:
    """A SLURM allocation of several nodes, seen from its batch script or salloc shell."""

    job_id: str
    hosts: tuple[str, ...]
    gpus_per_node: str | None = None
    """The allocation's GPUs per node (--gpus-per-node, or the count a --gres request gave),
    asked for again by the agents' step: clusters give a step only what it asks for."""
    cpus_per_node: int | None = None
    """The allocation's CPUs on a node: the agent's step asks for all of them, else a
    cluster that confines steps to their CPUs would put every rank of a node on one."""

    @property
    def port(self) -> int:
        """The store's port: derived from the job id, so concurrent jobs sharing a node
        rarely collide (override with --master)."""
        digits = re.sub(r"[^0-9]", "", self.job_id) or "0"
        return 20000 + int(digits) % 20000


def slurm_job(env: Mapping[str, str] | None = None) -> SlurmJob | None:
    """The allocation to start agents in: several nodes, and not already inside a job step
    (an srun task would otherwise start srun again)."""
    env = os.environ if env is None else env
    if "SLURM_JOB_ID" not in env or "SLURM_STEP_ID" in env or "SLURM_STEPID" in env:
        return None
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        return None
    hosts = tuple(expand_hostlist(nodelist))
    gpus = env.get("SLURM_GPUS_PER_NODE") or env.get("SLURM_GPUS_ON_NODE") or None
    cpus = env.get("SLURM_CPUS_ON_NODE", "")
    return SlurmJob(env["SLURM_JOB_ID"], hosts, gpus,
                    int(cpus) if cpus.isdigit() and int(cpus) > 0 else None
                    ) if len(hosts) > 1 else None


def srun_per_node_argv(job: SlurmJob, argv: Sequence[str]) -> list[str]:
    """srun starting ``argv`` once on every node of the allocation; the step asks for the
    node's CPUs and GPUs, which that task's own ranks share."""
    k = len(job.hosts)
    gpus = [f"--gpus-per-node={job.gpus_per_node}"] if job.gpus_per_node else []
    cpus = [f"--cpus-per-task={job.cpus_per_node}"] if job.cpus_per_node else []
    return ["srun", f"--nodes={k}", f"--ntasks={k}", "--ntasks-per-node=1", *cpus, *gpus,
            *argv]
