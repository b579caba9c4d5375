"""Workloads: what the ranks of a point run, as one module each, behind one protocol.

A workload declares, in its own module:

- its spec keys (``spec_keys``) and their validation (``parse``), giving JSON-able params;
- what its plan carries (``plan_params``: the params every rank receives in plan.json)
  and the part of a point's id it decides (``content``);
- its sites per step and message bytes per site, and how its compute scales with the
  world size (``sites_per_step``, ``message_bytes``, ``compute_share``): what the step
  model needs; and each site's compute, message bytes and collective as the simulator
  runs a step (``simulated_sites``);
- its rank loop (``run``), timing each site with the ``SiteTimer`` that
  ``RankRun.site_timer`` makes (CUDA events on a GPU, the schedule's detours);
- its words in the report and in ``jitterlab validate`` (``describe``, ``model_note``,
  ``check_fit``), and extra per-point summary fields (``summary``).

Spec parsing, sweep expansion, plans, the worker, the model and the report reach a
workload only through ``get_workload(name)``. ``name`` is a registered name
(``WORKLOADS``), a ``module:Class`` path (the module must be importable by every rank:
on ``PYTHONPATH`` or in the directory jitterlab runs from), or a name another package
registers under the ``jitterlab.workloads`` entry-point group. Importing this module, and
a workload's module, must not import torch (``jitterlab validate`` stays fast): a
workload imports what its rank loop needs inside ``run``.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

ENTRY_POINT_GROUP = "jitterlab.workloads"

WORKLOADS: dict[str, str] = {
    "tp_decode": "collectives.tp_decode:TPDecode",
    "microbench": "collectives.microbench:Microbench",
    "bsp": "collectives.bsp:BSP",
    "moe_decode": "collectives.moe_decode:MoEDecode",
    "dp_step": "collectives.dp_step:DPStep",
}
"""The workloads jitterlab ships, by name: ``module:Class``."""


@dataclass(frozen=True, kw_only=True)
class SweepCommon:
    """What a sweep spec's common keys say, for a workload's ``parse``."""

    dtype: str
    world_sizes: tuple[int, ...]
    batches: tuple[int, ...]
    steps: int
    warmup: int
    algorithm: str
    ranks_per_node: int


@dataclass(frozen=True)
class SimSite:
    """One site of a step as the simulator runs it."""

    compute_s: float
    """Compute before the site's collective, seconds (0: none, or the simulator takes
    compute from a fit; the workload's ``simulated_sites`` says which)."""
    message_bytes: int
    """nccl-tests size S of the site's collective."""
    collective: str
    """The collective (``collectives.ops`` name), e.g. all_reduce."""
    overlap: bool = False
    """The site's compute overlaps the previous site's collective (``jitter_models.
    simulate.Site.overlap``)."""
    load: Any = None
    """Uneven per-rank work per step (``jitter_models.site_load.SiteLoad``), or None."""


@dataclass(kw_only=True)
class RankRun:
    """What one rank's loop is given (``launch.worker`` builds it)."""

    backend: Any
    """The rank's ``collectives.backends.Backend``."""
    params: dict[str, Any]
    """The plan's workload params (``plan_params``' output, as plan.json carries it)."""
    dtype: str
    seed: int
    schedule: Any
    """The point's ``jitter_models.Schedule``, or None."""
    injector: Any
    node: int
    """The rank's node for node-scoped draws (``jitter_models.node_of``)."""
    algorithms: tuple[str, ...]
    ranks_per_node: int
    out_dir: str
    progress: Any = None
    """A one-element int64 slot receiving each timed collective's index, or None."""
    fault: Any = None
    """``collectives.microbench.Fault`` (a testing aid), or None."""
    hop_log: Any = None
    """``collectives.explicit.HopLog`` to give the explicit collectives when the plan asks
    for ``record_hops``, else None."""

    def site_timer(self, records: Any) -> Any:
        """The ``collectives.timing.SiteTimer`` for this rank's loop, writing to
        ``records``: CUDA events on a CUDA device, the schedule's detours at this rank's
        offset, the progress slot as its mark. Every workload's timer comes from here."""
        from .timing import site_timer

        return site_timer(self.backend, self.injector, records, schedule=self.schedule,
                          seed=self.seed, mark=self.progress)


@dataclass(kw_only=True)
class RankResult:
    records: Any
    """The rank's ``collectives.timing.Records``."""
    wrong: list[int] = field(default_factory=list)
    """Wrong elements per checked case (-1: not checked)."""
    ops: list[tuple[str, str]] = field(default_factory=lambda: [("all_reduce", "native")])
    """(collective, algorithm) of each record ``op`` index."""


@runtime_checkable
class Workload(Protocol):
    name: str
    spec_keys: Mapping[str, str]
    """The workload's own spec keys, each with a one-line description."""

    def parse(self, doc: Mapping[str, Any], common: SweepCommon) -> dict[str, Any]:
        """The spec's workload keys as JSON-able params; ValueError naming the key."""
        ...

    def check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Plan params validated, defaults filled in (plan.json is input too); ValueError
        naming the key."""
        ...

    def plan_params(self, params: Mapping[str, Any], *, batch: int, steps: int,
                    warmup: int) -> dict[str, Any]: ...

    def content(self, params: Mapping[str, Any], batch: int) -> dict[str, Any]: ...

    def collectives(self, params: Mapping[str, Any]) -> tuple[str, ...]: ...

    def sites_per_step(self, params: Mapping[str, Any]) -> int: ...

    def message_bytes(self, params: Mapping[str, Any], *, batch: int, dtype: str,
                      world_size: int) -> int: ...

    def compute_share(self, params: Mapping[str, Any]) -> Callable[[float], float]: ...

    def simulated_sites(self, params: Mapping[str, Any], *, batch: int, dtype: str,
                        world_size: int) -> tuple[SimSite, ...]:
        """One step's sites, in order, as the simulator runs them."""
        ...

    def describe(self, params: Mapping[str, Any]) -> str: ...

    def model_note(self, params: Mapping[str, Any]) -> str: ...

    def check_fit(self, params: Mapping[str, Any], common: SweepCommon
                  ) -> tuple[str | None, str | None]: ...

    def summary(self, tables: list[dict], metas: list[dict]) -> dict[str, Any]: ...

    def run(self, rank: RankRun) -> RankResult: ...


PROTOCOL = ("name", "spec_keys", "parse", "check_params", "plan_params", "content",
            "collectives", "sites_per_step", "message_bytes", "compute_share",
            "simulated_sites", "describe", "model_note", "check_fit", "summary", "run")
"""Every member of ``Workload``: ``get_workload`` refuses an object that lacks one."""


class BaseWorkload:
    """Defaults for the optional parts of the protocol: one all-reduce collective, compute
    that does not shrink with N, simulated sites without compute, nothing to check
    against a device's memory, no extra summary fields."""

    name = "?"
    spec_keys: Mapping[str, str] = {}

    def parse(self, doc: Mapping[str, Any], common: SweepCommon) -> dict[str, Any]:
        return {}

    def params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` over the workload's defaults, validated (ValueError naming the key);
        here: as given. ``check_params`` and ``plan_params`` go through it."""
        return dict(params)

    def check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return self.params(params)

    def plan_params(self, params: Mapping[str, Any], *, batch: int, steps: int,
                    warmup: int) -> dict[str, Any]:
        return self.params({**params, "batch": batch, "steps": steps, "warmup": warmup})

    def content(self, params: Mapping[str, Any], batch: int) -> dict[str, Any]:
        return {**params, "batch": batch}

    def collectives(self, params: Mapping[str, Any]) -> tuple[str, ...]:
        return ("all_reduce",)

    def compute_share(self, params: Mapping[str, Any]) -> Callable[[float], float]:
        return _constant_share

    def simulated_sites(self, params: Mapping[str, Any], *, batch: int, dtype: str,
                        world_size: int) -> tuple[SimSite, ...]:
        """``sites_per_step`` sites of ``message_bytes`` each, the first collective, and
        compute 0: the simulator takes this workload's compute from a fit."""
        nbytes = self.message_bytes(params, batch=batch, dtype=dtype,
                                    world_size=world_size)
        site = SimSite(compute_s=0.0, message_bytes=int(nbytes),
                       collective=self.collectives(params)[0])
        return (site,) * self.sites_per_step(params)

    def describe(self, params: Mapping[str, Any]) -> str:
        return self.name

    def model_note(self, params: Mapping[str, Any]) -> str:
        share = self.compute_share(params)
        return ("compute(N) the measured compute, held" if share is _constant_share else
                "compute(N) the measured compute scaled by the workload's compute share")

    def check_fit(self, params: Mapping[str, Any], common: SweepCommon
                  ) -> tuple[str | None, str | None]:
        return None, None

    def summary(self, tables: list[dict], metas: list[dict]) -> dict[str, Any]:
        return {}


def with_defaults(workload: str, defaults: Mapping[str, Any], params: Mapping[str, Any]
                  ) -> dict[str, Any]:
    """``params`` over ``defaults``; ValueError naming a key the workload does not take."""
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"{unknown[0]}: not a {workload} parameter (known: "
                         f"{', '.join(defaults)})")
    return {**defaults, **params}


def check_ints(params: Mapping[str, Any], bounds: tuple[tuple[str, int], ...]) -> None:
    """Each named param an integer at least its bound; ValueError naming the first not."""
    for name, low in bounds:
        v = params[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name}: must be an integer >= {low}, got {v!r}")


def _constant_share(n: float) -> float:
    return 1.0


def get_workload(name: str) -> Workload:
    """The workload ``name`` refers to; ValueError naming it when none does."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"workload: expected a name or 'module:Class', got {name!r}")
    return _resolve(name)


@functools.cache
def _resolve(name: str) -> Workload:
    target = WORKLOADS.get(name) or _entry_point(name) or name
    if ":" not in target:
        raise ValueError(f"workload: unknown {name!r} (known: {', '.join(known())}, or "
                         "'module:Class' of a workload importable by every rank)")
    module_name, _, attr = target.partition(":")
    try:
        module = _import(module_name)
    except ImportError as exc:
        raise ValueError(f"workload: cannot import {module_name!r} for {name!r} ({exc}); "
                         "it must be importable by every rank (PYTHONPATH or the "
                         "directory jitterlab runs from)") from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise ValueError(f"workload: {module_name!r} has no {attr!r}")
    try:
        workload = cls() if isinstance(cls, type) else cls
    except Exception as exc:  # noqa: BLE001 - a user's class: say what went wrong
        raise ValueError(f"workload: cannot make {name!r} ({type(exc).__name__}: "
                         f"{exc})"[:300]) from None
    missing = [m for m in PROTOCOL if not hasattr(workload, m)]
    if missing:
        raise ValueError(f"workload: {name!r} is not a workload (no {', '.join(missing)}; "
                         "subclass collectives.workload.BaseWorkload for the defaults)")
    return workload


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name.split(".")[0] or os.getcwd() in sys.path:
            raise
    sys.path.append(os.getcwd())  # as `python -m` finds a module in the current directory
    return importlib.import_module(module_name)


def _entry_point(name: str) -> str | None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep.value
    return None


def known() -> list[str]:
    """Registered workload names: jitterlab's own, then entry points'."""
    from importlib.metadata import entry_points

    return [*WORKLOADS, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)
                          if ep.name not in WORKLOADS)]
