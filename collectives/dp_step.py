"""The data-parallel training step: roofline forward and backward compute for a model's
parameters and a rank's tokens, then the gradients' all-reduces in buckets, optionally
overlapped with the backward pass, as PyTorch DDP does.

A step's sites are its buckets, in the order DDP reduces them (the last layers'
gradients first): B = ceil(parameters x gradient bytes / bucket bytes), every bucket
``bucket_size`` bytes but the last, which holds the rest. Site 0's compute is the forward
pass plus bucket 0's share of the backward pass; site j's is bucket j's share (in
proportion to its bytes). Each site then all-reduces its bucket. ``overlap = true``: every
site j >= 1 overlaps (``jitter_models.simulate.Site.overlap``): its backward share starts
when the previous share (and its delay) ended, and its all-reduce starts when both its
share and the previous all-reduce are done; the last bucket's all-reduce overlaps nothing.
DDP packs whole parameter tensors into buckets and caps its first one at 1 MiB; here the
flat gradient is cut at every ``bucket_size`` bytes (a simplification). With overlap the
records' compute (``t_arrive - t_start - delay``) includes a bucket's wait for the
previous all-reduce, and sites overlap in time: their parts no longer add up to the step.

Compute (roofline, ``collectives.hardware``): forward 2 P T FLOPs, backward 4 P T (the 6 P
T training cost, Kaplan et al. 2020, "Scaling Laws for Neural Language Models"), for P
parameters and T tokens per rank; each pass reads the bf16 weights once; a pass takes
max(flops / (compute_efficiency x peak), weight bytes / HBM bandwidth). The efficiency
scales the FLOP rate only (it is a model FLOPs utilization): default 0.4, the 38-43% bf16
MFU Meta reports for Llama 3 training on H100s (Dubey et al. 2024, "The Llama 3 Herd of
Models", Table 4). Data parallelism is weak scaling: T is per rank and fixed, so a rank's
compute does not shrink with N (the default ``compute_share`` of 1: the speedup is N
T(1) / T(N), ``jitter_models.sim_stats.useful_work``).

Spec keys (top level of the sweep's TOML, beside ``workload = "dp_step"``): ``model``
("llama-3-8b": 8.03e9 parameters, "llama-3-70b": 70.6e9, the counts of Meta's Llama 3
model cards), ``parameters`` (a count that overrides the preset: tests use tiny models),
``tokens_per_rank`` (default 8192, one Llama 3 sequence), ``bucket_size`` (default "25MB":
DDP's bucket_cap_mb = 25, i.e. 25 x 2**20 bytes; K, M, G are powers of 1024 with an
optional trailing B), ``overlap`` (default true), ``hardware`` (a preset or a table,
default h100) and ``compute_efficiency``. The sweep's ``batch`` must be 1 (tokens_per_rank
sizes the compute); the gradients are in the sweep's ``dtype`` (bfloat16 or float16: 2
bytes a parameter, as mixed-precision training reduces them; float32: DDP's default), so
the records' bytes are what the ranks move.

Real ranks: the compute is a host spin of the roofline time (``HostInjector``), the
schedule's delay follows each site's compute, then the bucket's all-reduce with the
sweep's algorithm. Gradients are never materialized, so any model fits: one bucket
buffer, all zero but for a strided sample of at most ``CHECK_ELEMENTS`` elements that
carry the exact-result check. Before each all-reduce the sample is filled with values
whose sum over ranks is exact in every float dtype (element k of rank r: ((k + q) // N)
% 4 + 1 where (k + q) % N == r, else 0, q the bucket's index mod 2: the sum is that small
integer, one rank's term each, and a bucket's result differs from its neighbour's; at N =
1 the all-reduce is the identity and the check passes by construction); after it, the
sample is
compared with that sum (the zeros stay zeros), every step, warm-up included;
``RankResult.wrong`` counts the wrong elements per site over all steps. Filling or
checking the sample costs a few microseconds: without overlap the fill and the previous
bucket's check run inside the site's compute (its spin ends at site start + compute);
with overlap they run when the previous all-reduce is seen done, just before the next is
posted. Overlap needs one buffer only, not two: a bucket is filled when it is posted, not
while its gradients are computed, and one all-reduce is in flight at a time.

Overlap on real ranks: when a site's compute and delay end its bucket is queued, and the
next site's compute starts at once. The all-reduces run in order, one in flight (DDP's
communication stream serializes the buckets): a queued bucket is posted
(``backend.iall_reduce``) as soon as the previous one is seen done. The compute and delay
spin in ``POLL_NS`` slices, calling ``backend.done(request)`` between them: MPI progresses
a non-blocking collective only inside MPI calls. ``t_arrive`` is when the bucket was
posted, ``t_done`` when its completion was first seen; the step ends when the last
all-reduce is done. Without overlap the call is the blocking one: the two modes differ
in the MPI call as well (Open MPI's non-blocking all-reduce, libnbc, took about twice its
tuned blocking one for 1 MiB on shared memory, measured on 2 ranks: ~330 us against
~165 us). Overlap takes the backend's own all-reduce only (an explicit
algorithm runs blocking point-to-point steps on the rank's one thread): ``parse`` refuses
it. On a CUDA device the overlapped path is refused at run time (the host would time the
stream's work). Without overlap, explicit algorithms run too, but link-scoped jitter with
buckets of two sizes is refused at run time (its per-link draws are kept per buffer size).
"""

from __future__ import annotations

import functools
import re
from collections import deque
from typing import Any

import numpy as np

from jitter_models.units import MAX_DELAY_NS

from .hardware import HARDWARE, hardware
from .workload import BaseWorkload, RankResult, SimSite, check_ints, with_defaults

MODELS: dict[str, int] = {"llama-3-8b": 8_030_000_000, "llama-3-70b": 70_600_000_000}
"""Parameter counts of Meta's Llama 3 model cards (8.03B and 70.6B)."""
MIB = 1 << 20
DEFAULT_BUCKET_BYTES = 25 * MIB  # torch DDP's bucket_cap_mb = 25 (MB there is 2**20 bytes)
FORWARD_FLOPS, BACKWARD_FLOPS = 2, 4  # per parameter and token (Kaplan et al. 2020)
WEIGHT_BYTES = 2  # bf16 weights, read once per pass
MAX_PARAMETERS = 10**13
MAX_TOKENS = 1 << 30
MAX_BUCKET_BYTES = 1 << 30
MAX_BUCKETS = 1 << 16
CHECK_ELEMENTS = 4096
POLL_NS = 20_000
GRAD_DTYPES = ("float32", "float16", "bfloat16", "float64")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMG]?)(?:i?B)?\s*$", re.IGNORECASE)


def parse_bucket_size(value: Any) -> int:
    """Bytes from an integer or text such as "25MB", "25M", "512KiB" (powers of 1024, as
    DDP's bucket_cap_mb); ValueError naming bucket_size."""
    match = _SIZE_RE.match(value) if isinstance(value, str) else None
    if match is not None:
        nbytes = int(match.group(1)) * _UNITS[match.group(2).upper()]
    elif isinstance(value, int) and not isinstance(value, bool):
        nbytes = value
    else:
        raise ValueError(f"bucket_size: expected bytes such as '25MB' (powers of 1024) or "
                         f"an integer, got {value!r}")
    if not 1 <= nbytes <= MAX_BUCKET_BYTES:
        raise ValueError(f"bucket_size: must be 1 B to 1 GiB, got {value!r}")
    return nbytes


def _cap_bytes(params: dict[str, Any]) -> int:
    """A full bucket: ``bucket_size`` rounded down to whole gradient elements (at least
    one)."""
    esize = params["grad_bytes"]
    return max(params["bucket_bytes"] // esize, 1) * esize


def bucket_count(params: dict[str, Any]) -> int:
    return -(-params["parameters"] * params["grad_bytes"] // _cap_bytes(params))


def bucket_bytes(params: dict[str, Any]) -> list[int]:
    """Each bucket's bytes, in reduction order: full buckets, the last one the rest of
    the gradient."""
    cap, n = _cap_bytes(params), bucket_count(params)
    return [cap] * (n - 1) + [params["parameters"] * params["grad_bytes"] - cap * (n - 1)]


def pass_seconds(params: dict[str, Any]) -> tuple[float, float]:
    """(forward, backward) seconds of one rank's step on the roofline (module docstring)."""
    hw = hardware(params["hardware"])
    p, t = params["parameters"], params["tokens_per_rank"]
    rate = hw.peak_flops * params["compute_efficiency"]
    read_s = p * WEIGHT_BYTES / hw.hbm_bytes_per_s
    return (max(FORWARD_FLOPS * p * t / rate, read_s),
            max(BACKWARD_FLOPS * p * t / rate, read_s))


def site_compute_s(params: dict[str, Any]) -> list[float]:
    """Each site's compute: site 0 the forward pass and bucket 0's backward share, site j
    bucket j's share of the backward pass, in proportion to its bytes."""
    forward_s, backward_s = pass_seconds(params)
    sizes = bucket_bytes(params)
    total = sum(sizes)
    out = [backward_s * b / total for b in sizes]
    out[0] += forward_s
    return out


class DPStep(BaseWorkload):
    """A data-parallel training step as a workload (module docstring). Plan params:
    ``model``, ``parameters``, ``tokens_per_rank``, ``bucket_bytes``, ``overlap``,
    ``hardware``, ``compute_efficiency``, ``grad_bytes`` (the sweep's dtype's element
    size: what sizes the buckets), plus ``batch`` (1), ``steps`` and ``warmup``."""

    name = "dp_step"
    spec_keys = {"model": f"parameter-count preset: {', '.join(MODELS)}",
                 "parameters": "parameter count, overriding model's",
                 "tokens_per_rank": "tokens per rank per step (default 8192)",
                 "bucket_size": "gradient bytes per all-reduce, e.g. '25MB' (2**20 B)",
                 "overlap": "all-reduce buckets during the backward pass (default true)",
                 "hardware": f"roofline preset or table: {', '.join(HARDWARE)}",
                 "compute_efficiency": "fraction of peak FLOP/s achieved (default 0.4)"}
    DEFAULTS: dict[str, Any] = {"model": "llama-3-8b", "parameters": MODELS["llama-3-8b"],
                                "tokens_per_rank": 8192,
                                "bucket_bytes": DEFAULT_BUCKET_BYTES, "overlap": True,
                                "hardware": "h100", "compute_efficiency": 0.4,
                                "grad_bytes": 4, "batch": 1,
                                "steps": 16, "warmup": 5}

    def parse(self, doc: Any, common: Any) -> dict[str, Any]:
        from jitter_models.algorithms import has_pattern

        from .backends import elem_size

        if common.dtype not in GRAD_DTYPES:
            raise ValueError(f"dtype: dp_step's gradients are floating point "
                             f"({', '.join(GRAD_DTYPES)}), got {common.dtype!r}")
        if tuple(common.batches) != (1,):
            raise ValueError(f"batch: dp_step has no batch (tokens_per_rank sizes its "
                             f"compute): leave it at 1, got {list(common.batches)}")
        model = doc.get("model", "custom" if "parameters" in doc else "llama-3-8b")
        if model != "custom" and model not in MODELS:
            raise ValueError(f"model: must be one of {', '.join(MODELS)} (or custom, with "
                             f"parameters), got {model!r}")
        params = {"model": model,
                  "parameters": doc.get("parameters", MODELS.get(model)),
                  "tokens_per_rank": doc.get("tokens_per_rank", 8192),
                  "bucket_bytes": parse_bucket_size(doc.get("bucket_size", "25MB")),
                  "overlap": doc.get("overlap", True),
                  "hardware": doc.get("hardware", "h100"),
                  "compute_efficiency": doc.get("compute_efficiency", 0.4),
                  "grad_bytes": elem_size(common.dtype)}
        self._check(params)
        if params["overlap"] and has_pattern(common.algorithm):
            raise ValueError(f"overlap: takes the backend's own all-reduce only (an "
                             f"explicit algorithm blocks the rank's one thread), got "
                             f"algorithm {common.algorithm!r}; set overlap = false")
        return params

    def _check(self, p: dict[str, Any]) -> None:
        check_ints(p, (("parameters", 1), ("tokens_per_rank", 1), ("bucket_bytes", 1)))
        if p["grad_bytes"] not in (2, 4, 8):
            raise ValueError(f"grad_bytes: must be 2, 4 or 8, got {p['grad_bytes']!r}")
        for key, high in (("parameters", MAX_PARAMETERS), ("tokens_per_rank", MAX_TOKENS),
                          ("bucket_bytes", MAX_BUCKET_BYTES)):
            if p[key] > high:
                raise ValueError(f"{key}: must be at most {high}, got {p[key]}")
        if not isinstance(p["overlap"], bool):
            raise ValueError(f"overlap: must be true or false, got {p['overlap']!r}")
        eff = p["compute_efficiency"]
        if isinstance(eff, bool) or not isinstance(eff, (int, float)) \
                or not 0 < eff <= 1:
            raise ValueError(f"compute_efficiency: must be in (0, 1], got {eff!r}")
        if not isinstance(p["hardware"], (str, dict)):
            raise ValueError(f"hardware: expected a preset name or a table, got "
                             f"{p['hardware']!r}")
        try:
            hardware(p["hardware"])
        except (ValueError, TypeError) as exc:
            text = str(exc)
            raise ValueError(text if text.startswith("hardware") else
                             f"hardware: {text}") from None
        n = bucket_count(p)
        if n > MAX_BUCKETS:
            raise ValueError(f"bucket_size: {n} buckets per step is over the limit of "
                             f"{MAX_BUCKETS}; raise bucket_size")
        if sum(pass_seconds(p)) * 1e9 > MAX_DELAY_NS:
            raise ValueError(f"tokens_per_rank: a step's compute must be at most 1 hour, "
                             f"got {sum(pass_seconds(p)):.0f} s")

    def params(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` over the defaults, validated; ValueError naming the key."""
        p = with_defaults(self.name, self.DEFAULTS, params)
        self._check(p)
        check_ints(p, (("batch", 1), ("steps", 1), ("warmup", 0)))
        if p["batch"] != 1:
            raise ValueError(f"batch: dp_step has no batch, must be 1, got {p['batch']!r}")
        return p

    def sites_per_step(self, params: dict[str, Any]) -> int:
        return bucket_count(params)

    def message_bytes(self, params: dict[str, Any], *, batch: int, dtype: str,
                      world_size: int) -> int:
        """A full bucket's bytes (the last bucket may be smaller)."""
        return bucket_bytes(params)[0]

    def simulated_sites(self, params: dict[str, Any], *, batch: int, dtype: str,
                        world_size: int) -> tuple[SimSite, ...]:
        """One site per bucket: its roofline compute, its bytes, an all-reduce; sites j >=
        1 overlap the previous all-reduce when ``overlap``."""
        overlap = params["overlap"]
        return tuple(SimSite(compute_s=c, message_bytes=b, collective="all_reduce",
                             overlap=overlap and j > 0)
                     for j, (c, b) in enumerate(zip(site_compute_s(params),
                                                    bucket_bytes(params))))

    def describe(self, params: dict[str, Any]) -> str:
        sizes = bucket_bytes(params)
        hw = params["hardware"] if isinstance(params["hardware"], str) else "custom"
        return (f"dp_step of {params['model']} ({params['parameters']:.3g} parameters, "
                f"{params['tokens_per_rank']} tokens/rank, {len(sizes)} buckets of "
                f"{params['bucket_bytes'] / MIB:g} MiB, overlap "
                f"{'on' if params['overlap'] else 'off'}, {hw} roofline at "
                f"{params['compute_efficiency']:g} of peak)")

    def model_note(self, params: dict[str, Any]) -> str:
        return ("compute(N) the measured compute, held: data parallelism is weak scaling "
                "(tokens per rank fixed)")

    def summary(self, tables: list[dict], metas: list[dict]) -> dict[str, Any]:
        """``wrong``: wrong elements of the exact-result check over every rank, site and
        step (-1 where a rank did not check)."""
        counts = [c for m in metas for c in (m.get("wrong") or [-1])]
        return {"wrong": -1 if any(c < 0 for c in counts) else int(sum(counts))}

    def run(self, rank: Any) -> RankResult:
        from .backends import elem_size
        from .timing import Records

        p, backend = self.params(rank.params), rank.backend
        if elem_size(rank.dtype) != p["grad_bytes"]:
            raise ValueError(f"grad_bytes: the plan's {p['grad_bytes']} bytes a gradient "
                             f"element are not the run's dtype {rank.dtype!r}")
        sizes = bucket_bytes(p)
        n_sites, warmup, total = len(sizes), p["warmup"], p["warmup"] + p["steps"]
        clipped = 0
        if rank.schedule is not None:
            delays, clipped = rank.schedule.delays_ns(rank.seed, backend.rank, rank.node,
                                                      backend.world_size, total, n_sites)
        else:
            delays = np.zeros((total, n_sites), dtype=np.int64)
        records = Records(p["steps"] * (n_sites + 1))
        timer = rank.site_timer(records)
        ranks = _RankStep(backend, rank.dtype, sizes,
                          [round(c * 1e9) for c in site_compute_s(p)])
        if not p["overlap"]:
            clipped += ranks.bind_reduces(rank, total)
        loop = functools.partial(ranks.overlapped if p["overlap"] else ranks.blocking, timer)
        records.delays_clipped = clipped  # warm-up steps included
        rows = delays.tolist()
        for step in range(total):
            timer.record_sites = step >= warmup
            backend.barrier()
            timer.begin_step(step - warmup)
            end = loop(step, rows[step])
            if step >= warmup:
                timer.step_row(end)
        return RankResult(records=records, wrong=ranks.wrong,
                          ops=[("all_reduce", rank.algorithms[0])])


class _Check:
    """The exact-result check of one bucket size (module docstring): a strided sample of
    the buffer, this rank's part of each bucket's values, and their sum."""

    def __init__(self, backend: Any, view: Any, dtype: str, count: int):
        stride = -(-count // CHECK_ELEMENTS)
        self.backend, self.sample = backend, view[::stride]
        k = np.arange(-(-count // stride))
        n, r = backend.world_size, backend.rank
        self.mine, self.want = [], []
        for q in (0, 1):  # even and odd buckets: a bucket's result is not its neighbour's
            owner, value = (k + q) % n, ((k + q) // n) % 4 + 1
            self.mine.append(backend.from_numpy(
                np.where(owner == r, value, 0).astype(np.float32), dtype))
            self.want.append(value.astype(np.float32))

    def fill(self, j: int) -> None:
        self.backend.copy(self.sample, self.mine[j % 2])

    def wrong(self, j: int) -> int:
        got = self.backend.to_numpy(self.sample)
        return int(np.count_nonzero(got != self.want[j % 2]))


class _RankStep:
    """One rank's buckets: the buffer, each bucket's view and check, each site's compute
    (ns), and the two ways of running a step (module docstring)."""

    def __init__(self, backend: Any, dtype: str, sizes: list[int], compute_ns: list[int]):
        from .backends import elem_size
        from .inject import HostInjector

        esize = elem_size(dtype)
        self.backend, self.compute_ns, self.sizes = backend, compute_ns, sizes
        self.counts = [b // esize for b in sizes]
        buf = backend.from_numpy(np.zeros(self.counts[0], dtype=np.float32), dtype)
        self.views = [buf if c == self.counts[0] else buf[:c] for c in self.counts]
        checks = {c: _Check(backend, buf[:c], dtype, c) for c in set(self.counts)}
        self.checks = [checks[c] for c in self.counts]
        self.wrong = [0] * len(sizes)
        self.spin = HostInjector()
        self.reduces: list[Any] = []

    def _verify(self, j: int) -> None:
        self.wrong[j] += self.checks[j].wrong(j)

    # --- without overlap: SiteTimer.site per bucket, any algorithm ----------------------

    def bind_reduces(self, rank: Any, total: int) -> int:
        """Each bucket's blocking all-reduce with the sweep's algorithm; the hop draws
        clipped."""
        from .explicit import all_reduce_call

        distinct = sorted(set(self.counts), reverse=True)
        link = rank.schedule is not None and rank.schedule.scope == "link"
        if link and len(distinct) > 1:
            raise ValueError("bucket_size: link-scoped jitter needs buckets of one size "
                             "(parameters x dtype bytes a multiple of bucket_size)")
        by_count, clipped = {}, 0
        for c in distinct:
            calls = total * self.counts.count(c)
            by_count[c], k = all_reduce_call(
                rank.backend, algorithm=rank.algorithms[0], count=c, dtype=rank.dtype,
                ranks_per_node=rank.ranks_per_node, schedule=rank.schedule, seed=rank.seed,
                n_calls=calls, injector=rank.injector, hop_log=rank.hop_log)
            clipped += k
        self.reduces = [functools.partial(by_count[c], v)
                        for c, v in zip(self.counts, self.views)]
        return clipped

    def _compute(self, j: int) -> None:
        """Site j's compute: check the previous bucket, fill this one, spin to the site's
        end of compute (from its start: the bookkeeping is absorbed)."""
        from .timing import now_ns

        t0 = now_ns()
        if j:
            self._verify(j - 1)
        self.checks[j].fill(j)
        self.spin.inject(t0, self.compute_ns[j])

    def blocking(self, timer: Any, step: int, delays: list[int]) -> int:
        n = len(self.sizes)
        for j in range(n):
            timer.site(j, delay_ns=delays[j], collective=self.reduces[j],
                       compute=functools.partial(self._compute, j), nbytes=self.sizes[j],
                       index=step * n + j)
        end = timer.end_step()
        self._verify(n - 1)  # outside the step's time, before the next barrier
        return end

    # --- with overlap: polled sites, non-blocking all-reduces in order ------------------

    def overlapped(self, timer: Any, step: int, delays: list[int]) -> int:
        n = len(self.sizes)
        stream = _CommStream(self, n)
        spans = []
        for j in range(n):
            spans.append(timer.polled_site(compute_ns=self.compute_ns[j], delay_ns=delays[j],
                                           wait_until=stream.wait_until, index=step * n + j))
            stream.ready(j)
        stream.drain()
        end = timer.end_step()
        for j, span in enumerate(spans):
            timer.record_polled(j, span, delay_ns=delays[j], t_arrive_ns=stream.t_arrive[j],
                                t_done_ns=stream.t_done[j], nbytes=self.sizes[j])
        return end


class _CommStream:
    """One step's all-reduces as DDP's communication stream runs them: in order, one in
    flight; a bucket queued when its compute and delay end, posted when the previous one
    is seen done."""

    def __init__(self, rank: _RankStep, n: int):
        self.rank, self.n = rank, n
        self.queue: deque[int] = deque()
        self.flight: tuple[int, Any] | None = None
        self.t_arrive, self.t_done = [0] * n, [0] * n

    def ready(self, j: int) -> None:
        """Bucket j's compute and delay are done: queue it (posted now if nothing is in
        flight)."""
        self.queue.append(j)
        self.poll()

    def poll(self) -> bool:
        """Drive the in-flight all-reduce; post the next when it is done. True while one
        is in flight."""
        from .timing import now_ns

        if self.flight is not None:
            j, request = self.flight
            if not self.rank.backend.done(request):
                return True
            self._finish(j, now_ns())
        if self.queue:
            self._post(self.queue.popleft())
            return True
        return False

    def wait_until(self, deadline_ns: int) -> None:
        """Spin to ``deadline_ns`` polling every ``POLL_NS``; with nothing in flight, the
        host injector's sleep and spin."""
        from .timing import now_ns

        while self.poll():
            t = now_ns()
            if t >= deadline_ns:
                return
            stop = min(deadline_ns, t + POLL_NS)
            while now_ns() < stop:
                pass
        t = now_ns()
        self.rank.spin.inject(t, deadline_ns - t)

    def drain(self) -> None:
        """Wait for every queued all-reduce (the step's end)."""
        from .timing import now_ns

        while self.flight is not None or self.queue:
            if self.flight is not None:
                j, request = self.flight
                self.rank.backend.wait(request)
                self._finish(j, now_ns())
            if self.queue:
                self._post(self.queue.popleft())

    def _post(self, j: int) -> None:
        from .timing import now_ns

        self.rank.checks[j].fill(j)
        self.t_arrive[j] = now_ns()
        self.flight = (j, self.rank.backend.iall_reduce(self.rank.views[j]))

    def _finish(self, j: int, t_done: int) -> None:
        self.t_done[j], self.flight = t_done, None
        self.rank._verify(j)
