"""The bandwidth-vs-predictability study's spec: the ``[study]`` table of a simulate spec
(``experiments/presets/bandwidth-vs-predictability.toml``) parsed into a ``Study``, with
``BadInput`` naming the key on bad input. experiments/study.py runs it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from jitter_models.errors import BadInput
from jitter_models.hop_laws import HopLaw
from jitter_models.paired import PairedNetwork, PairedTier
from jitter_models.units import parse_duration


@dataclass(frozen=True)
class Entry:
    """One workload of the study: its sites come from the workload module."""

    workload: str
    model: str
    algorithm: str
    world_sizes: tuple[int, ...]
    sensitivity_n: tuple[int, ...]
    dtype: str
    batch: int
    params: dict[str, Any]
    work: Any = field(compare=False, repr=False)


@dataclass(frozen=True)
class Study:
    name: str
    seed: int
    steps: int
    samples: int
    samples_large: int
    ranks_per_node: int
    threshold: float
    intra: PairedTier
    steady: PairedTier
    fast_bandwidth_Bps: float
    variants: tuple[tuple[str, HopLaw], ...]
    entries: tuple[Entry, ...]
    check_n: int
    check_steps: int
    sources: dict[str, str]

    def network(self, name: str, tier: PairedTier) -> PairedNetwork:
        return PairedNetwork(name, self.intra, tier, self.ranks_per_node)

    def networks(self, variants: tuple[tuple[str, HopLaw], ...]) -> list[PairedNetwork]:
        """The steady network, then the fast one with each variant's latency law."""
        return [self.network("steady", self.steady)] + [
            self.network(name, PairedTier(self.fast_bandwidth_Bps, law))
            for name, law in variants]


# --- parsing -------------------------------------------------------------------------

def _table(doc: Any, key: str) -> dict:
    v = doc.get(key)
    if not isinstance(v, dict):
        raise BadInput(f"{key}: expected a table, got {v!r}")
    return v


def _number(doc: dict, key: str, path: str, low: float, default: Any = None,
            integer: bool = False) -> Any:
    v = doc.get(key, default)
    ok = (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
          and v >= low and (not integer or isinstance(v, int)))
    if not ok:
        kind = "an integer" if integer else "a number"
        raise BadInput(f"{path}.{key}: must be {kind} >= {low:g}, got {v!r}")
    return v


def _law(doc: Any, path: str) -> HopLaw:
    if not isinstance(doc, dict):
        raise BadInput(f"{path}: expected a table (family, mean, ...), got {doc!r}")
    known = {"family", "mean", "sigma", "shape", "clip", "p", "factor"}
    extra = sorted(set(doc) - known)
    if extra:
        raise BadInput(f"{path}.{extra[0]}: unknown key (known: {', '.join(sorted(known))})")
    try:
        mean = parse_duration(doc.get("mean"))
        return HopLaw(family=doc.get("family", "lognormal"), mean_s=mean,
                      **{k: float(doc[k]) for k in ("sigma", "shape", "clip", "p", "factor")
                         if k in doc})
    except (ValueError, TypeError) as exc:
        raise BadInput(f"{path}.{str(exc)}") from None


def _tier(doc: dict, path: str, law: HopLaw | None = None) -> PairedTier:
    bw = _number(doc, "bandwidth_gbps", path, 1e-9)
    return PairedTier(bw * 1e9, law if law is not None else _law(doc.get("latency"),
                                                                 f"{path}.latency"))


def parse_study(doc: dict, default_name: str = "study") -> Study:
    """The spec's ``[study]`` (module docstring); BadInput naming the key."""
    st = _table(doc, "study")
    intra = _tier(_table(st, "intra"), "study.intra")
    steady = _tier(_table(st, "steady"), "study.steady")
    fast = _table(st, "fast")
    fast_bw = _number(fast, "bandwidth_gbps", "study.fast", 1e-9) * 1e9
    if not math.isclose(fast_bw, 2 * steady.bandwidth_Bps, rel_tol=1e-9):
        raise BadInput(f"study.fast.bandwidth_gbps: the fast network has twice the steady "
                       f"bandwidth ({2 * steady.bandwidth_Bps / 1e9:g}), got "
                       f"{fast_bw / 1e9:g}")
    variants = []
    raw = st.get("variant")
    if not isinstance(raw, list) or not raw:
        raise BadInput("study.variant: expected at least one [[study.variant]] table")
    for i, v in enumerate(raw):
        path = f"study.variant[{i}]"
        name = v.get("name") if isinstance(v, dict) else None
        if not isinstance(name, str) or not name or name == "steady":
            raise BadInput(f"{path}.name: expected a name other than 'steady', got {name!r}")
        if name in (v for v, _ in variants):
            raise BadInput(f"{path}.name: {name!r} names another variant already")
        law = _law(v.get("latency"), f"{path}.latency")
        if not math.isclose(law.mean_s, steady.latency.mean_s, rel_tol=1e-9):
            raise BadInput(f"{path}.latency.mean: must equal the steady network's mean "
                           f"latency ({steady.latency.mean_s * 1e6:g}us): the fast network "
                           f"has the same mean latency, got {law.mean_s * 1e6:g}us")
        if law.ratio_p99_p50() < 3:
            raise BadInput(f"{path}.latency: the fast network is jittery: its per-hop "
                           f"p99/p50 must be at least 3, got {law.ratio_p99_p50():.3g}")
        variants.append((name, law))
    entries = tuple(_entry(w, i) for i, w in enumerate(_list(st, "workload")))
    return Study(name=str(doc.get("name", default_name)),
                 seed=_number(doc, "seed", "", 0, 0, integer=True),
                 steps=_number(st, "steps", "study", 2, 300, integer=True),
                 samples=_number(st, "samples", "study", 2, 256, integer=True),
                 samples_large=_number(st, "samples_large", "study", 2, 32, integer=True),
                 ranks_per_node=_number(st, "ranks_per_node", "study", 1, 8, integer=True),
                 threshold=_number(st, "efficiency_threshold", "study", 0, 0.5),
                 intra=intra, steady=steady, fast_bandwidth_Bps=fast_bw,
                 variants=tuple(variants), entries=entries,
                 check_n=_number(st, "check_n", "study", 2, 16, integer=True),
                 check_steps=_number(st, "check_steps", "study", 2, 40, integer=True),
                 sources={str(k): str(v) for k, v in st.get("sources", {}).items()})


def _list(doc: dict, key: str) -> list:
    v = doc.get(key)
    if not isinstance(v, list) or not v:
        raise BadInput(f"study.{key}: expected at least one [[study.{key}]] table")
    return v


def _entry(w: Any, i: int) -> Entry:
    from collectives.workload import SweepCommon, get_workload
    from jitter_models.algorithms import check_algorithm

    path = f"study.workload[{i}]"
    if not isinstance(w, dict):
        raise BadInput(f"{path}: expected a table, got {w!r}")
    name = w.get("workload")
    try:
        work = get_workload(name)
        sizes = tuple(w.get("world_sizes", ()))
        if not sizes or any(isinstance(n, bool) or not isinstance(n, int) or n < 1
                            for n in sizes) or sizes != tuple(sorted(set(sizes))):
            raise ValueError(f"world_sizes: increasing integers >= 1, got {sizes!r}")
        if sizes[0] != 1:
            raise ValueError(f"world_sizes: must start at 1 (the efficiency baseline), "
                             f"got {sizes!r}")
        common = SweepCommon(dtype=w.get("dtype", "bfloat16"), world_sizes=sizes,
                             batches=(w.get("batch", 1),), steps=1, warmup=0,
                             algorithm="native", ranks_per_node=8)
        params = work.parse(w.get("params", {}), common)
        algorithm = w.get("algorithm", "native")
        for c in work.collectives(params):
            check_algorithm(algorithm, c)
        sens = tuple(w.get("sensitivity_n", ()))
        if any(n not in sizes for n in sens):
            raise ValueError(f"sensitivity_n: each must be one of world_sizes, got {sens!r}")
    except ValueError as exc:
        raise BadInput(f"{path}.{exc}") from None
    return Entry(workload=work.name, model=str(w.get("model", work.describe(params))),
                 algorithm=algorithm, world_sizes=sizes, sensitivity_n=sens,
                 dtype=common.dtype, batch=common.batches[0], params=params, work=work)
