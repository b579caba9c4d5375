"""Per-collective timing records, preallocated, and the rank file they end up in.

During a run a rank only reads ``time.perf_counter_ns`` (CLOCK_MONOTONIC) and stores
integers into preallocated numpy columns: nothing else happens between two clock reads.
After the run the columns go to ``rank-00007.parquet`` atomically (temporary name, then
rename), with the run's metadata and this rank's clock offsets to rank 0 (``clocks.py``).

``SiteTimer`` is the one timing primitive every workload uses: site start -> compute ->
delay -> arrive -> collective -> done, on the host clock or, on CUDA, with events on the
stream anchored to the host clock once per step. On the host it also honours a schedule's
detours (``jitter_models.detours``): compute and delay pause for every detour they overlap.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jitter_models.files import named_error

from .files import set_file_mode
from .inject import NoInjector

# One row per timed collective. All times int64 nanoseconds on this rank's monotonic clock.
COLUMNS: dict[str, str] = {
    "step": "int64",          # iteration (microbench) or decode step
    "site": "int64",          # collective index inside the step (microbench: case index)
    "op": "int64",            # index into the run's list of collectives
    "bytes": "int64",         # nccl-tests size S of the operation
    "delay_req_ns": "int64",  # what the schedule asked
    "delay_ns": "int64",      # what the injector achieved: t_arrive - the end of compute
                              # - detour_ns
    "t_start_ns": "int64",    # site start, before the injected delay
    "t_arrive_ns": "int64",   # entered the collective
    "t_done_ns": "int64",     # collective finished on this rank (device synchronized)
}
# Explicit algorithms with scope = "link": over the messages this rank sent in the
# collective, the summed departure delays asked, and achieved (post time - ready). Rank
# files written before they existed lack them: readers take them as optional.
HOP_COLUMNS: dict[str, str] = {"hop_delay_req_ns": "int64", "hop_delay_ns": "int64"}
# Detours (time-axis noise): the detour time the site's arrival deadline included, so that
# t_arrive - t_start = compute + delay_ns + detour_ns. 0 without detours; rank files
# written before detours existed lack it: readers take it as 0.
DETOUR_COLUMNS: dict[str, str] = {"detour_ns": "int64"}
OPTIONAL_COLUMNS: dict[str, str] = HOP_COLUMNS | DETOUR_COLUMNS
"""Columns a rank file may lack (written before they existed): each reads as 0."""

now_ns = time.perf_counter_ns


class Records:
    """Preallocated columns; ``add`` fills the next row (call it outside timed regions)."""

    def __init__(self, capacity: int):
        if capacity < 0:
            raise ValueError(f"capacity: must be >= 0, got {capacity}")
        self.columns = {k: np.zeros(capacity, dtype=v)
                        for k, v in (COLUMNS | OPTIONAL_COLUMNS).items()}
        self.n = 0
        # Draws of the schedule clipped to the maximum delay (jitter_models MAX_DELAY_NS)
        # before this rank injected them; the rank file's metadata carries it.
        self.delays_clipped = 0

    def add(self, *, step: int, site: int, op: int, nbytes: int, delay_req_ns: int,
            t_start_ns: int, t_arrive_ns: int, t_done_ns: int, delay_ns: int | None = None,
            hop_delay_req_ns: int = 0, hop_delay_ns: int = 0, detour_ns: int = 0) -> None:
        """The next row. ``delay_ns`` defaults to ``t_arrive - t_start`` (no compute
        before the delay)."""
        i = self.n
        c = self.columns
        c["step"][i], c["site"][i], c["op"][i], c["bytes"][i] = step, site, op, nbytes
        c["delay_req_ns"][i] = delay_req_ns
        c["delay_ns"][i] = t_arrive_ns - t_start_ns if delay_ns is None else delay_ns
        c["t_start_ns"][i], c["t_arrive_ns"][i], c["t_done_ns"][i] = (
            t_start_ns, t_arrive_ns, t_done_ns)
        c["hop_delay_req_ns"][i], c["hop_delay_ns"][i] = hop_delay_req_ns, hop_delay_ns
        c["detour_ns"][i] = detour_ns
        self.n = i + 1

    def table(self) -> dict[str, np.ndarray]:
        return {k: v[: self.n] for k, v in self.columns.items()}


def write_rank_file(path: str | os.PathLike[str], columns: dict[str, np.ndarray],
                    metadata: dict[str, Any]) -> None:
    """Parquet with the records and JSON metadata, written to a temporary name and renamed,
    so a reader never sees half a file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(columns).replace_schema_metadata(
        {"jitterlab": json.dumps(metadata, sort_keys=True)})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            set_file_mode(f.fileno())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # a full disk: report the rank file, not its temporary name
        raise named_error(exc, path) from exc
    finally:
        tmp.unlink(missing_ok=True)


def read_rank_file(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict]:
    """(columns, metadata) of one rank file."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(b"jitterlab", b"{}"))
    return {name: table.column(name).to_numpy() for name in table.column_names}, meta


# --- the timing primitive ------------------------------------------------------------


class PolledSpan(NamedTuple):
    """When a :meth:`SiteTimer.polled_site` started, ended its compute and was ready (its
    compute and delay done), and the detour time it included; host ns."""

    t_start_ns: int
    t_delay_ns: int
    t_ready_ns: int
    detour_ns: int


STEP_SITE = -1
"""``site`` of the per-step row (the step's start and end)."""


def cuda_event() -> Any:
    import torch

    return torch.cuda.Event(enable_timing=True)


def site_timer(backend: Any, injector: Any, records: Records, *, schedule: Any = None,
               seed: int = 0, mark: np.ndarray | None = None) -> SiteTimer:
    """The timer of a workload's rank loop: CUDA events on a CUDA device, and the
    schedule's detours (if any) at this rank's offset (``Detours.offsets(seed, [rank])``)."""
    detours = getattr(schedule, "detours", None)
    offset = float(detours.offsets(seed, [backend.rank])[0]) if detours is not None else 0.0
    cuda = str(getattr(backend, "device", "cpu")).startswith("cuda")
    return SiteTimer(backend, injector, records, mark=mark,
                     event=cuda_event if cuda else None, detours=detours,
                     detour_offset_s=offset)


class SiteTimer:
    """Every workload times its sites through this: site start -> compute -> delay ->
    arrive -> collective -> done, one record per site, plus one row per step.

    On the host (CPU backends) each mark is a clock read. On CUDA (``event=cuda_event``)
    the marks are events on the stream: compute, a stream-side delay and the collective
    run asynchronously, so host clocks would time kernel launches. The events are read
    after the step's closing synchronize and placed on the host clock through one anchor
    per step: the step's start event, recorded on an idle stream just after the host read
    ``t0`` (the launch latency between the two is the times' uncertainty;
    ``benchmarks/gpu_check.py`` measures it). Tests pass a fake ``event`` with its own
    clock.

    ``mark``: a one-element int64 array (the progress board's slot) that receives each
    site's index in the run after its delay, before ``t_arrive``.

    ``detours`` (host only): a ``jitter_models.detours.Detours`` entered at
    ``detour_offset_s``. Time runs from the run's first :meth:`begin_step` (just after the
    point's first barrier, warm-up steps included). A site's arrival deadline is then
    ``origin + detours.end(t_start - origin, compute + delay, offset)``, compute measured
    from :meth:`open_site` to the delay's start: the rank behaves as if compute and delay
    paused for every detour they overlap, and a rank inside a detour at the site start
    begins when it ends. The injector waits until that deadline; the record's
    ``detour_ns`` is the detour time it included.
    """

    def __init__(self, backend: Any, injector: Any, records: Records, *,
                 mark: np.ndarray | None = None, event: Any = None, detours: Any = None,
                 detour_offset_s: float = 0.0):
        if detours is not None and event is not None:
            raise ValueError("detours need the host injector on CPU backends: on CUDA a "
                             "host-side wait is hidden behind the stream's queued work")
        if detours is not None and isinstance(injector, NoInjector):
            raise ValueError("detours need the host injector on CPU backends: injector "
                             "'none' waits for nothing")
        self.backend, self.injector, self.records = backend, injector, records
        self.detours, self.detour_offset_s = detours, float(detour_offset_s)
        self._origin: int | None = None
        self.mark = mark if mark is not None else np.zeros(1, dtype=np.int64)
        self._event = event
        self._pending: list[tuple[tuple[int, ...], tuple[Any, ...]]] = []
        self._pool: list[tuple[Any, Any, Any, Any]] = []
        self._step = 0
        self._t0 = 0
        self._anchor: Any = None
        self._end: Any = None
        self._t_start = 0
        self.record_sites = True
        """False keeps only the per-step rows (to measure recording's cost)."""

    @property
    def on_events(self) -> bool:
        return self._event is not None

    def begin_step(self, step: int) -> None:
        """Call after the step's barrier; every rank's step starts here."""
        self._step = step
        if self._event is not None:
            if self._anchor is None:
                self._anchor, self._end = self._event(), self._event()
            self.backend.synchronize()  # an idle stream: the anchor records at once
            self._t0 = now_ns()
            self._anchor.record()
        else:
            self._t0 = now_ns()
            if self._origin is None:
                self._origin = self._t0

    def site(self, site: int, *, delay_ns: int, collective: Callable[[], tuple[int, int]],
             compute: Callable[[], None] | None = None, op: int = 0, nbytes: int = 0,
             index: int = 0) -> None:
        """One site: ``compute`` (if any), the injected delay, then ``collective``, which
        returns the (requested, achieved) hop delays of its messages (0, 0 for a native
        call). ``index``: the site's number in the run, for the progress board."""
        self.open_site()
        if compute is not None:
            compute()
        self.close_site(site, delay_ns=delay_ns, collective=collective, op=op,
                        nbytes=nbytes, index=index, computed=compute is not None)

    def open_site(self) -> None:
        """The site starts (its compute follows): for workloads whose compute calls back
        into the timer, such as a model's forward pass (:meth:`site` otherwise)."""
        if self._event is None:
            self._t_start = now_ns()
            return
        k = len(self._pending)
        if k == len(self._pool):
            self._pool.append(tuple(self._event() for _ in range(4)))  # type: ignore[misc]
        self._pool[k][0].record()

    def close_site(self, site: int, *, delay_ns: int,
                   collective: Callable[[], tuple[int, int]], op: int = 0, nbytes: int = 0,
                   index: int = 0, computed: bool = True) -> None:
        """Compute done: the delay, then the collective, and the site's record.
        ``computed=False``: nothing ran since :meth:`open_site`, the delay starts there."""
        if self._event is None:
            t_start = self._t_start
            t_delay = now_ns() if computed else t_start
            detour = 0
            if self.detours is None:
                self.injector.inject(t_delay, delay_ns)
            else:
                detour = self._detour_ns(t_start, t_delay, delay_ns)
                self.injector.inject(t_delay, delay_ns + detour)
            self.mark[0] = index
            t_arrive = now_ns()
            hops = collective()
            self.backend.synchronize()
            t_done = now_ns()
            if self.record_sites:
                self.records.add(step=self._step, site=site, op=op, nbytes=nbytes,
                                 delay_req_ns=delay_ns, t_start_ns=t_start,
                                 t_arrive_ns=t_arrive, t_done_ns=t_done,
                                 delay_ns=t_arrive - t_delay - detour,
                                 hop_delay_req_ns=hops[0], hop_delay_ns=hops[1],
                                 detour_ns=detour)
            return
        start, delayed, arrive, done = self._pool[len(self._pending)]
        if computed:
            delayed.record()
        else:
            delayed = start
        self.injector.inject(now_ns(), delay_ns)  # a stream-side delay on CUDA
        self.mark[0] = index
        arrive.record()
        hops = collective()
        done.record()
        self._pending.append(((site, op, nbytes, delay_ns, *hops),
                              (start, delayed, arrive, done)))

    def _detour_ns(self, t_start: int, t_delay: int, delay_ns: int) -> int:
        """The detour time in this site's arrival deadline: the deadline (the end of
        compute and delay, paused for detours) minus ``t_delay + delay_ns``."""
        if self._origin is None:  # a site before any begin_step: time runs from it
            self._origin = t_start
        origin = self._origin
        work_ns = (t_delay - t_start) + max(delay_ns, 0)
        if self.detours.clear((t_start - origin) * 1e-9, work_ns * 1e-9,
                              self.detour_offset_s):
            return 0  # no detour in reach: skip the vectorized end (tens of µs in numpy)
        end_s = float(self.detours.end((t_start - origin) * 1e-9, work_ns * 1e-9,
                                       self.detour_offset_s))
        deadline = origin + round(end_s * 1e9)
        return max(deadline - t_start - work_ns, 0)  # (float rounding: never negative)

    def end_step(self) -> int:
        """Close the step: synchronize, write its site records; the step's end on the
        host clock (on CUDA: when the stream reached the end of the step)."""
        if self._event is None:
            self.backend.synchronize()
            return now_ns()
        self._end.record()
        self.backend.synchronize()
        to_host = self._to_host
        for (site, op, nbytes, req, hop_req, hop_got), evs in self._pending:
            t_start, t_delay, t_arrive, t_done = (to_host(e) for e in evs)
            if self.record_sites:
                self.records.add(step=self._step, site=site, op=op, nbytes=nbytes,
                                 delay_req_ns=req, t_start_ns=t_start, t_arrive_ns=t_arrive,
                                 t_done_ns=t_done, delay_ns=t_arrive - t_delay,
                                 hop_delay_req_ns=hop_req, hop_delay_ns=hop_got)
        self._pending.clear()
        return to_host(self._end)

    # --- sites whose compute overlaps a non-blocking collective (host clock only) -----

    def polled_site(self, *, compute_ns: int, delay_ns: int,
                    wait_until: Callable[[int], None], index: int = 0) -> PolledSpan:
        """One site whose compute and delay run while an earlier site's non-blocking
        collective is in flight (a DDP bucket): from now (the site start) compute until
        start + ``compute_ns``, then the injected delay, honouring the detours as
        :meth:`close_site` does. Both waits go through ``wait_until(deadline_ns)``, the
        workload's, which must drive the in-flight collective while it waits (MPI
        progresses only inside MPI calls), so the injector is not used. Records nothing:
        the collective's arrival and end are known later, :meth:`record_polled` takes
        them. Host clock only: on CUDA a host wait says nothing of the stream."""
        if self._event is not None:
            raise ValueError("overlap: a polled site runs on the host clock only (CPU "
                             "backends); on CUDA the stream, not the host, would overlap")
        t_start = now_ns()
        wait_until(t_start + max(compute_ns, 0))
        t_delay = now_ns()
        detour = (0 if self.detours is None else
                  self._detour_ns(t_start, t_delay, delay_ns))
        if delay_ns > 0 or detour:
            wait_until(t_delay + max(delay_ns, 0) + detour)
        self.mark[0] = index
        return PolledSpan(t_start, t_delay, now_ns(), detour)

    def record_polled(self, site: int, span: PolledSpan, *, delay_ns: int, t_arrive_ns: int,
                      t_done_ns: int, op: int = 0, nbytes: int = 0) -> None:
        """The record of a :meth:`polled_site` whose collective entered at
        ``t_arrive_ns`` (at or after ``span.t_ready_ns``: it may have waited for the
        collective before it) and was seen done at ``t_done_ns``. ``delay_ns``: what the
        schedule asked; the achieved delay is the span's (ready - end of compute -
        detour), so a wait for the earlier collective counts as the site's compute in
        ``t_arrive - t_start - delay - detour``. Call it outside timed regions."""
        if self.record_sites:
            self.records.add(step=self._step, site=site, op=op, nbytes=nbytes,
                             delay_req_ns=delay_ns, t_start_ns=span.t_start_ns,
                             t_arrive_ns=t_arrive_ns, t_done_ns=t_done_ns,
                             delay_ns=span.t_ready_ns - span.t_delay_ns - span.detour_ns,
                             detour_ns=span.detour_ns)

    def step_row(self, t_end: int) -> None:
        """The per-step row: the step's start and end on this rank."""
        self.records.add(step=self._step, site=STEP_SITE, op=0, nbytes=0, delay_req_ns=0,
                         t_start_ns=self._t0, t_arrive_ns=self._t0, t_done_ns=t_end)

    def _to_host(self, event: Any) -> int:
        return self._t0 + round(self._anchor.elapsed_time(event) * 1e6)
