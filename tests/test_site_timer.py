"""The one timing primitive (collectives.timing.SiteTimer), on the host clock and on a
fake CUDA event clock: what lands in which column, and that device time is read from the
events, not from the host, which runs ahead of the stream."""

from __future__ import annotations

import numpy as np
import pytest

import collectives.timing as timing
from collectives.timing import STEP_SITE, Records, SiteTimer


class Stream:
    """A fake GPU stream: work enqueued runs after what is queued, on its own clock; the
    host only enqueues (1 us a launch) and waits at synchronize."""

    def __init__(self, host: list[int]):
        self.host = host  # the host clock, ns (a list so the test can move it)
        self.busy_until = 0

    def enqueue(self, duration_ns: int) -> None:
        self.host[0] += 1_000
        self.busy_until = max(self.busy_until, self.host[0]) + duration_ns

    def synchronize(self) -> None:
        self.host[0] = max(self.host[0], self.busy_until)


class Event:
    def __init__(self, stream: Stream):
        self.stream, self.t = stream, None

    def record(self) -> None:
        self.stream.enqueue(0)
        self.t = self.stream.busy_until

    def elapsed_time(self, other: Event) -> float:  # ms, as torch.cuda.Event
        return (other.t - self.t) / 1e6


class Backend:
    def __init__(self, stream: Stream):
        self.stream = stream

    def synchronize(self) -> None:
        self.stream.synchronize()


class StreamDelay:
    """Like the CUDA injector: the delay is a kernel on the stream; the host goes on."""

    def __init__(self, stream: Stream):
        self.stream = stream

    def inject(self, t_start_ns: int, delay_ns: int) -> None:
        self.stream.enqueue(delay_ns)


def test_on_cuda_the_records_hold_device_time_not_launch_time(monkeypatch):
    host = [10_000_000]
    monkeypatch.setattr(timing, "now_ns", lambda: host[0])
    stream = Stream(host)
    records = Records(8)
    timer = SiteTimer(Backend(stream), StreamDelay(stream), records,
                      event=lambda: Event(stream))
    for step in range(2):
        timer.begin_step(step)
        for site in range(2):
            timer.site(site, delay_ns=300_000, nbytes=64, index=2 * step + site,
                       compute=lambda: stream.enqueue(2_000_000),        # 2 ms of compute
                       collective=lambda: (stream.enqueue(50_000), (0, 0))[1])  # 50 us
        timer.step_row(timer.end_step())
    t = records.table()
    sites = t["site"] >= 0
    # Delay and collective as the stream ran them (to the launch latency, 1 us here),
    # although the host enqueued each in about a microsecond.
    delay = t["delay_ns"][sites]
    coll = (t["t_done_ns"] - t["t_arrive_ns"])[sites]
    compute = (t["t_arrive_ns"] - t["t_start_ns"])[sites] - delay
    assert np.all(np.abs(delay - 300_000) <= 2_000), delay
    assert np.all(np.abs(coll - 50_000) <= 2_000), coll
    assert np.all(np.abs(compute - 2_000_000) <= 2_000), compute
    # Steps: from the anchor to the stream's end of the step, about 2 x 2.35 ms.
    steps = ~sites
    assert t["site"][steps].tolist() == [STEP_SITE, STEP_SITE]
    dur = (t["t_done_ns"] - t["t_start_ns"])[steps]
    assert np.all(np.abs(dur - 4_700_000) <= 10_000), dur
    # Times are on the host clock: each step starts after the previous one ended.
    assert t["t_start_ns"][steps][1] >= t["t_done_ns"][steps][0]


class HostClock:
    """A host-only run: each clock read advances 10 ns; compute and delay advance it."""

    def __init__(self):
        self.t = 1_000

    def __call__(self) -> int:
        self.t += 10
        return self.t


class HostDelay:
    def __init__(self, clock: HostClock):
        self.clock = clock

    def inject(self, t_start_ns: int, delay_ns: int) -> None:
        self.clock.t = max(self.clock.t, t_start_ns + delay_ns)


class NoDevice:
    def synchronize(self) -> None:
        return None


def test_on_the_host_each_column_is_its_own_interval(monkeypatch):
    clock = HostClock()
    monkeypatch.setattr(timing, "now_ns", clock)
    records, mark = Records(4), np.zeros(1, dtype=np.int64)
    timer = SiteTimer(NoDevice(), HostDelay(clock), records, mark=mark)
    timer.begin_step(0)

    def compute() -> None:
        clock.t += 5_000

    def collective() -> tuple[int, int]:
        clock.t += 700
        return 40, 45

    timer.site(3, delay_ns=2_000, compute=compute, collective=collective, op=1, nbytes=8,
               index=7)
    timer.site(4, delay_ns=2_000, collective=collective, index=8)  # no compute
    t = records.table()
    assert t["site"].tolist() == [3, 4] and mark[0] == 8
    # With compute, the delay is timed from when compute ended, not from the site start.
    assert t["delay_ns"][0] == 2_000 + 10  # the deadline, then one clock read
    assert t["t_arrive_ns"][0] - t["t_start_ns"][0] >= 5_000 + 2_000
    # Without compute the delay starts at the site start (delay = t_arrive - t_start).
    assert t["delay_ns"][1] == t["t_arrive_ns"][1] - t["t_start_ns"][1]
    assert t["hop_delay_req_ns"].tolist() == [40, 40] and t["hop_delay_ns"].tolist() == [45, 45]
    assert (t["t_done_ns"] - t["t_arrive_ns"]).tolist() == [710, 710]
    assert t["op"].tolist() == [1, 0] and t["bytes"].tolist() == [8, 0]
    assert t["detour_ns"].tolist() == [0, 0]  # no detours: none in the deadline


# --- detours (jitter_models.detours): compute and delay pause for each detour -----------

MS = 1_000_000


class StillClock:
    """A host clock that only moves when the test moves it (reads cost nothing)."""

    def __init__(self, t: int):
        self.t = t

    def __call__(self) -> int:
        return self.t


def _detour_timer(monkeypatch, offset_s: float = 0.0) -> tuple[StillClock, SiteTimer]:
    from jitter_models.detours import Periodic

    clock = StillClock(1_000 * MS)
    monkeypatch.setattr(timing, "now_ns", clock)
    # One 2 ms detour at the start of every 10 ms, entered at offset_s.
    timer = SiteTimer(NoDevice(), HostDelay(clock), Records(8),
                      detours=Periodic(period=0.01, duration=0.002),
                      detour_offset_s=offset_s)
    return clock, timer


def _site(timer: SiteTimer, clock: StillClock, *, compute_ns: int | None, delay_ns: int,
          site: int = 0) -> None:
    def compute() -> None:
        clock.t += compute_ns

    def collective() -> tuple[int, int]:
        clock.t += MS // 10  # 100 us in the all-reduce
        return 0, 0

    timer.site(site, delay_ns=delay_ns, collective=collective,
               compute=None if compute_ns is None else compute)


def test_a_site_starting_in_a_detour_begins_when_it_ends_and_a_crossed_detour_pauses_it(
        monkeypatch):
    clock, timer = _detour_timer(monkeypatch)
    origin = clock.t
    timer.begin_step(0)  # time 0: the first detour, [0, 2 ms)
    # Site 0 starts inside it: 1 ms compute + 0.5 ms delay of work begin at 2 ms, done at
    # 3.5 ms: the deadline holds the 2 ms of the detour.
    _site(timer, clock, compute_ns=1 * MS, delay_ns=MS // 2)
    # Site 1 starts at 3.6 ms: 6 ms compute + 1 ms delay = 7 ms of work; 6.4 ms fit before
    # the detour at 10 ms, the other 0.6 ms run after it ends at 12 ms: arrival at 12.6 ms.
    _site(timer, clock, compute_ns=6 * MS, delay_ns=1 * MS, site=1)
    # Site 2 starts at 12.7 ms: 2 ms of compute and none of delay end at 14.7 ms, before
    # the next detour at 20 ms: nothing added.
    _site(timer, clock, compute_ns=2 * MS, delay_ns=0, site=2)
    t = timer.records.table()
    rel = (t["t_start_ns"] - origin).tolist()
    assert rel == [0, 3_600_000, 12_700_000]
    assert (t["t_arrive_ns"] - origin).tolist() == [3_500_000, 12_600_000, 14_700_000]
    assert t["detour_ns"].tolist() == [2 * MS, 2 * MS, 0]
    # The achieved delay is the injector's part only: arrival - end of compute - detour.
    assert t["delay_ns"].tolist() == [MS // 2, 1 * MS, 0]
    compute = t["t_arrive_ns"] - t["t_start_ns"] - t["delay_ns"] - t["detour_ns"]
    assert compute.tolist() == [1 * MS, 6 * MS, 2 * MS]


def test_zero_work_inside_a_detour_waits_for_its_end_at_the_ranks_own_phase(monkeypatch):
    # Offset 3 ms: at time t the rank is at (t + 3 ms) mod 10 ms of its pattern, so its
    # detours are [7 ms, 9 ms) + k * 10 ms of run time.
    clock, timer = _detour_timer(monkeypatch, offset_s=0.003)
    origin = clock.t
    timer.begin_step(0)
    clock.t += 8_500_000  # 8.5 ms: inside [7, 9)
    _site(timer, clock, compute_ns=None, delay_ns=0)  # no compute, no delay
    clock.t = origin + 16_000_000  # 16 ms: 1 ms before the next detour, [17, 19)
    # 0.4 ms compute + 1 ms delay from 16 ms: 1 ms fits before 17 ms, 0.4 ms after 19 ms.
    _site(timer, clock, compute_ns=400_000, delay_ns=1 * MS, site=1)
    t = timer.records.table()
    assert (t["t_arrive_ns"] - origin).tolist() == [9 * MS, 19_400_000]
    assert t["detour_ns"].tolist() == [MS // 2, 2 * MS]
    assert t["delay_ns"].tolist() == [0, 1 * MS]


def test_time_runs_from_the_first_step_of_the_run_not_of_each_step(monkeypatch):
    clock, timer = _detour_timer(monkeypatch)
    origin = clock.t
    timer.begin_step(0)
    _site(timer, clock, compute_ns=1 * MS, delay_ns=0)  # [0, 2) detour: done at 3 ms
    clock.t = origin + 25 * MS  # step 1 begins at 25 ms: not in a detour (20..22 ms)
    timer.begin_step(1)
    _site(timer, clock, compute_ns=1 * MS, delay_ns=0, site=1)
    t = timer.records.table()
    assert t["detour_ns"].tolist() == [2 * MS, 0]
    assert (t["t_arrive_ns"] - origin).tolist() == [3 * MS, 26 * MS]


def test_detours_are_refused_where_the_host_cannot_wait_for_them():
    from collectives.inject import NoInjector
    from jitter_models.detours import Periodic

    detours = Periodic(period=0.01, duration=0.002)
    stream = Stream([0])
    with pytest.raises(ValueError, match=r"^detours need the host injector on CPU "
                                         r"backends: on CUDA"):
        SiteTimer(Backend(stream), StreamDelay(stream), Records(1),
                  event=lambda: Event(stream), detours=detours)
    with pytest.raises(ValueError, match=r"^detours need the host injector on CPU "
                                         r"backends: injector 'none' waits for nothing"):
        SiteTimer(NoDevice(), NoInjector(), Records(1), detours=detours)


class RankBackend(NoDevice):
    def __init__(self, rank: int, device: str):
        self.rank, self.device = rank, device


def test_every_workloads_timer_takes_the_schedules_detours_at_the_ranks_offset():
    from types import SimpleNamespace

    from collectives.workload import RankRun
    from jitter_models.detours import Periodic

    detours = Periodic(period=0.01, duration=0.002)
    schedule = SimpleNamespace(detours=detours)  # what Schedule.detours gives

    def run(rank: int, device: str = "cpu", sched=schedule) -> RankRun:
        return RankRun(backend=RankBackend(rank, device), params={}, dtype="float32",
                       seed=11, schedule=sched, injector=HostDelay(HostClock()), node=0,
                       algorithms=("native",), ranks_per_node=8, out_dir=".")

    offsets = [run(r).site_timer(Records(1)).detour_offset_s for r in range(3)]
    assert offsets == [float(x) for x in detours.offsets(11, [0, 1, 2])]
    assert len(set(offsets)) == 3 and all(0 <= x < 0.01 for x in offsets)
    timer = run(0).site_timer(Records(1))
    assert timer.detours is detours and not timer.on_events
    plain = run(0, sched=None).site_timer(Records(1))
    assert plain.detours is None and plain.detour_offset_s == 0.0
    with pytest.raises(ValueError, match=r"^detours need the host injector on CPU"):
        run(0, device="cuda:0").site_timer(Records(1))
