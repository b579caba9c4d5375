"""``jitterlab whatif SOURCE``: what a measured noise costs a workload at N = 8 .. 65,536,
and what it would cost with its tail halved or its spikes removed.

The source is one of:

- a ``jitterlab noise`` folder: the noise is a detour trace (time-axis noise: a rank's
  compute pauses while the host runs something else), the trace of one core (``--core``;
  default the core that lost the most time), replayed with the measurement's length as
  its period, each rank at its own random phase;
- a ``jitterlab fit`` folder or its fit.json: the noise is the best fit's delay law, drawn
  per rank before every collective;
- anything ``jitterlab fit`` reads (samples, records, a bench run): fitted first (no
  bootstrap: only the best's law is used), then as a fit.

The scenarios, each a ``[[jitter]]`` schedule of one simulate spec:

- ``none``: no noise (the reference each cost is measured against);
- ``measured``: the noise as measured;
- ``tail halved``: every delay or detour above the noise's p99 keeps its p99 and half of
  its excess (a delay law: 1,000,000 seeded draws so transformed, replayed as an
  ``empirical`` file; a trace: its detours so transformed);
- ``spikes removed``: a mixture fit without its spike component; any other law, and a
  trace's detours, clipped at the p99 (nearest rank; ``clip`` for a law).

The workload's spec comes from ``WORKLOADS`` (bsp: 10 sites of 100 µs compute and an 8-byte
all-reduce a step, the FWQ shape; tp_decode: Llama-3-70B on the h100 roofline, emulated
compute); N runs over the powers of 2 from 8 to 65,536 that the workload allows (tp_decode:
up to its 64 heads). The network: alpha 5 µs a hop, 50 GB/s (``--alpha``,
``--bandwidth-gbps``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from jitter_models.errors import BadInput
from jitter_models.percentiles import nearest_rank
from jitter_models.units import MAX_DELAY_S, format_duration

DEFAULT_N = tuple(2 ** k for k in range(3, 17))
WORKLOADS: dict[str, dict[str, Any]] = {
    "bsp": {"workload": "bsp", "sites_per_step": 10, "compute_per_site": "100us",
            "message_bytes": 8},
    "tp_decode": {"workload": "tp_decode", "model": "llama-3-70b", "compute": "emulated",
                  "hardware": "h100", "dtype": "bfloat16", "batch": 1},
    "moe_decode": {"workload": "moe_decode", "model": "deepseek-v3", "batch": 32},
    "dp_step": {"workload": "dp_step", "model": "llama-3-8b"},
}
TAIL_DRAWS = 1_000_000


def _tail_halved(x: np.ndarray, p99: float) -> np.ndarray:
    return np.where(x > p99, p99 + (x - p99) / 2, x)


def read_source(path: str, core: int | None, out: Path) -> dict[str, Any]:
    """What the source holds: ``{"kind": "trace", "file", "period_s", "core", ...}`` or
    ``{"kind": "dist", "dist": text, "family", ...}``."""
    p = Path(path)
    if p.is_dir() and (p / "noise.json").is_file():
        doc = _json(p / "noise.json", ("rows", "seconds"))
        rows = doc["rows"]
        if not rows:
            raise BadInput(f"source: {str(p / 'noise.json')!r} has no rows")
        if core is None:
            row = max(rows, key=lambda r: r["lost_fraction"] or 0)
        else:
            mine = [r for r in rows if r["core"] == core]
            if not mine:
                raise BadInput(f"--core: core {core} is not in {str(p)!r} (cores "
                               f"{', '.join(str(r['core']) for r in rows)})")
            row = mine[0]
        return {"kind": "trace", "file": str((p / f"detours-core{row['core']}.tsv").resolve()),
                "period_s": doc["seconds"], "core": row["core"],
                "source": f"jitterlab noise {str(p)!r}, core {row['core']} "
                          f"({row['interruptions']} interruptions in {doc['seconds']:g} s, "
                          f"{row['lost_fraction']:.3%} of the time lost)"}
    if core is not None:
        raise BadInput("--core: only for a jitterlab noise folder")
    fit_json = p / "fit.json" if p.is_dir() and (p / "fit.json").is_file() else (
        p if p.suffix == ".json" else None)
    if fit_json is not None:
        doc = _json(fit_json, ("best",))
        best = doc["best"]
        return {"kind": "dist", "dist": best["dist"], "family": best["family"],
                "params": best["params"],
                "source": f"the best fit ({best['family']}) of {doc.get('source', fit_json)}"}
    from jitter_models.fit import fit_all

    from .fit_input import load

    x, said = load(path)
    best = fit_all(x, bootstrap=0, jobs=1)["best"]
    return {"kind": "dist", "dist": best["dist"], "family": best["family"],
            "params": best["params"], "source": f"the best fit ({best['family']}) of {said}"}


def _json(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """A noise.json or fit.json with ``keys``, or one line of bad input."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BadInput(f"source: {str(path)!r} is not JSON that jitterlab wrote ({exc})"
                       ) from None
    if not isinstance(doc, dict) or any(k not in doc for k in keys):
        raise BadInput(f"source: {str(path)!r} is neither a jitterlab fit.json (best, "
                       "candidates) nor a noise folder's noise.json (rows)")
    return doc


def scenarios(src: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """The four ``[[jitter]]`` tables (module docstring); derived files go under ``out``."""
    from experiments.atomic import write_text_atomic
    from jitter_models.detour_trace import read_trace
    from jitter_models.distributions import parse

    out.mkdir(parents=True, exist_ok=True)
    none = {"name": "none", "dist": "constant(0s)"}
    if src["kind"] == "trace":
        starts, durations = read_trace(src["file"])
        p99 = nearest_rank(durations, 99) if durations.size else 0.0

        def trace(name: str, d: np.ndarray) -> str:  # the same starts, other durations
            f = out / f"detours-{name}.tsv"
            write_text_atomic(f, "".join(f"{s}\t{int(v)}\n" for s, v in
                                         zip(starts.tolist(), d.tolist())))
            return str(f.resolve())

        period = f"{src['period_s']:.9g}s"
        half = trace("tail-halved", _tail_halved(durations.astype(float), p99).round())
        cut = trace("spikes-removed", np.minimum(durations, p99))
        return [none,
                {"name": "measured", "dist": "constant(0s)",
                 "detours": f"trace('{src['file']}', period={period})"},
                {"name": "tail halved", "dist": "constant(0s)",
                 "detours": f"trace('{half}', period={period})"},
                {"name": "spikes removed", "dist": "constant(0s)",
                 "detours": f"trace('{cut}', period={period})"}]
    dist = parse(src["dist"])
    p99 = float(dist.ppf(0.99))
    x = _tail_halved(np.asarray(dist.sample(np.random.default_rng(0), TAIL_DRAWS)), p99)
    x = np.minimum(x, MAX_DELAY_S)  # the longest delay a schedule takes
    f = out / "tail-halved.txt"
    write_text_atomic(f, "latency_ns\n" + "\n".join(f"{v:.1f}" for v in x * 1e9) + "\n")
    if src["family"] == "mixture":
        p = src["params"]
        from jitter_models.fitters import LOGNORMAL

        spikes_removed = LOGNORMAL.text({"median": p["median"], "sigma": p["sigma"]})
    else:
        spikes_removed = f"clip(dist={src['dist']}, max={format_duration(p99)})"
    return [none, {"name": "measured", "dist": src["dist"]},
            {"name": "tail halved", "dist": f"empirical('{f.resolve()}')"},
            {"name": "spikes removed", "dist": spikes_removed}]


def spec_doc(workload: str, sizes: list[int], jitter: list[dict], *, steps: int,
             alpha: str, bandwidth_gbps: float, seed: int) -> dict[str, Any]:
    """The simulate spec of the what-if."""
    return {"name": f"whatif-{workload}", **WORKLOADS[workload], "world_sizes": sizes,
            "steps": steps, "seed": seed, "jitter": jitter,
            "network": {"alpha": alpha, "bandwidth_gbps": bandwidth_gbps}}


def allowed_sizes(workload: str, sizes: list[int]) -> tuple[list[int], list[str]]:
    """The sizes the workload's spec takes (tp_decode: those dividing its heads), and why
    each other was left out."""
    from experiments.spec import MAX_SIMULATED_WORLD, parse_spec

    ok, why = [], []
    for n in sizes:
        try:
            parse_spec(spec_doc(workload, [n], [{"name": "none", "dist": "constant(0s)"}],
                                steps=1, alpha="5us", bandwidth_gbps=50, seed=0),
                       max_world=MAX_SIMULATED_WORLD)
        except ValueError as exc:
            why.append(str(exc))
            continue
        ok.append(n)
    return ok, why


def summary(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (scenario, N): the mean and p99 step and their cost over no noise."""
    rows = data["rows"]
    base = {r["world_size"]: r for r in rows if r["schedule"] == "none"}
    out = []
    for r in rows:
        b = base[r["world_size"]]
        out.append({"scenario": r["schedule"], "world_size": r["world_size"],
                    "mean_us": r["mean_us"], "p99_us": r["p99_us"],
                    "mean_cost": r["mean_us"] / b["mean_us"] - 1,
                    "p99_cost": r["p99_us"] / b["p99_us"] - 1,
                    "efficiency": r.get("efficiency")})
    return out
