"""``jitterlab trace``: a real two-rank sweep (mpirun + MPI, a ring all-reduce with
``record_hops``; one point with rank-scoped delays and detours, one with link-scoped hop
delays) exported as Chrome trace-event JSON and checked against its own records: tracks,
nesting, every slice's ends, arrival skew, flow pairs, ``--steps``, the default cap, the
clock alignment and bad input."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from collectives.clocks import aligned
from collectives.timing import read_rank_file, write_rank_file

STEPS, WARMUP, N_SITES = 6, 1, 4  # the tiny model: 2 layers, 2 all-reduces each
SPEC = f"""\
name = "trace"
workload = "tp_decode"
model = "tiny"
compute = "emulated"
hardware = "h100"
world_sizes = [2]
backend = "mpi"
steps = {STEPS}
warmup = {WARMUP}
timeout_s = 60
algorithm = "ring"
record_hops = true

[[jitter]]
name = "rank"
dist = "exponential(50us)"
detours = "periodic(period=1ms, duration=200us)"

[[jitter]]
name = "link"
dist = "exponential(30us)"
scope = "link"
"""
PARENT = {"site": "step", "compute": "site", "delay": "site", "detour": "site",
          "wait": "site", "pattern": "wait", "hop": "pattern"}
DEPTH = {"step": 0, "site": 1, "compute": 2, "delay": 2, "detour": 2, "wait": 2, "pattern": 3,
         "hop": 4}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, jitterlab) -> Path:
    """The sweep, run for real once for this module (``jitterlab``: the command in this
    process, conftest.py; its ranks are real processes)."""
    root = tmp_path_factory.mktemp("trace")
    (root / "spec.toml").write_text(SPEC)
    env = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    res = jitterlab("run", str(root / "spec.toml"), "--out", str(root / "run"), env=env,
                    cwd=root)
    assert res.returncode == 0, res.stderr
    return root / "run"


def point_of(run_dir: Path, schedule: str) -> Path:
    for p in (run_dir / "points").iterdir():
        if json.loads((p / "summary.json").read_text())["schedule"] == schedule:
            return p
    raise AssertionError(schedule)


def trace(cli, src: Path, out: Path, *extra: str) -> tuple[object, dict]:
    res = cli("trace", str(src), "--out", str(out), *extra)
    assert res.returncode == 0, res.stderr
    return res, json.loads(out.read_text(), parse_constant=_no_constant)


def _no_constant(name: str) -> None:
    raise AssertionError(f"not strict JSON: {name}")


def ns(us: float) -> int:
    return round(us * 1000)


def slices(doc: dict, pid: int | None = None) -> list[dict]:
    return [e for e in doc["traceEvents"] if e["ph"] == "X" and pid in (None, e["pid"])]


def records(point: Path) -> list[tuple[dict, dict]]:
    return [read_rank_file(point / f"rank-{r:05d}.parquet") for r in range(2)]


def test_every_event_has_the_fields_of_its_phase(cli, run_dir, tmp_path):
    _, doc = trace(cli, run_dir, tmp_path / "t.json")
    assert set(doc) == {"traceEvents", "displayTimeUnit", "otherData"}
    assert doc["displayTimeUnit"] in ("ms", "ns")
    need = {"X": {"name", "cat", "ts", "dur", "pid", "tid"}, "M": {"name", "pid", "args"},
            "s": {"name", "cat", "id", "ts", "pid", "tid"},
            "f": {"name", "cat", "id", "ts", "pid", "tid", "bp"}}
    phases = defaultdict(int)
    for e in doc["traceEvents"]:
        phases[e["ph"]] += 1
        assert need[e["ph"]] <= e.keys(), e
        assert isinstance(e["pid"], int) and isinstance(e.get("tid", 0), int)
        if e["ph"] == "M":
            assert e["name"] in ("process_name", "process_sort_index", "thread_name",
                                 "thread_sort_index"), e
            assert ("name" if e["name"].endswith("_name") else "sort_index") in e["args"]
        else:
            assert math.isfinite(e["ts"]) and e["ts"] >= 0, e
        if e["ph"] == "X":
            assert e["dur"] >= 0 and isinstance(e["args"], dict), e
        if e["ph"] == "f":
            assert e["bp"] == "e"
    assert phases.keys() == {"X", "M", "s", "f"} and phases["s"] == phases["f"] > 0


def test_a_process_per_point_and_a_track_per_rank(cli, run_dir, tmp_path):
    _, doc = trace(cli, run_dir, tmp_path / "t.json")
    meta = [e for e in doc["traceEvents"] if e["ph"] == "M"]
    names = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
    assert sorted(n.split(" [")[0] for n in names.values()) == [
        "link N=2 batch=1", "rank N=2 batch=1"]
    for pid in names:
        threads = {e["tid"]: e["args"]["name"] for e in meta
                   if e["name"] == "thread_name" and e["pid"] == pid}
        assert threads == {0: "rank 0", 1: "rank 1"}
        assert {e["tid"] for e in slices(doc, pid)} == {0, 1}
    _, one = trace(cli, point_of(run_dir, "rank"), tmp_path / "one.json")
    assert {e["pid"] for e in one["traceEvents"]} == {1}


def nested(doc: dict) -> tuple[dict, Counter]:
    """The slices by track, after asserting that each lies inside its parent (of the
    category PARENT names); and how many of each category."""
    tracks = defaultdict(list)
    for e in slices(doc):
        tracks[e["pid"], e["tid"]].append(e)
    seen: Counter = Counter()
    for evs in tracks.values():
        evs.sort(key=lambda e: (ns(e["ts"]), -ns(e["dur"]), DEPTH[e["cat"]]))
        stack: list[tuple[int, int, dict]] = []
        for e in evs:
            a, b = ns(e["ts"]), ns(e["ts"]) + ns(e["dur"])
            assert b >= a
            while stack and a >= stack[-1][1]:
                stack.pop()
            parent = stack[-1][2]["cat"] if stack else None
            assert parent == PARENT.get(e["cat"]), (e, parent)  # properly nested, in place
            assert not stack or b <= stack[-1][1], e
            seen[e["cat"]] += 1
            stack.append((a, b, e))
    return tracks, seen


def test_slices_nest_and_each_site_is_tiled_by_its_parts(cli, run_dir, tmp_path):
    _, doc = trace(cli, run_dir, tmp_path / "t.json")
    tracks, seen = nested(doc)
    for evs in tracks.values():
        for site in (e for e in evs if e["cat"] == "site"):
            a, b = ns(site["ts"]), ns(site["ts"]) + ns(site["dur"])
            parts = sorted((e for e in evs if e["cat"] in ("compute", "delay", "detour", "wait")
                            and e["args"]["step"] == site["args"]["step"]
                            and e["args"]["site"] == site["args"]["site"]),
                           key=lambda e: e["ts"])
            assert parts[-1]["cat"] == "wait"
            edges = [a] + [ns(e["ts"]) + ns(e["dur"]) for e in parts]
            assert [ns(e["ts"]) for e in parts] == edges[:-1] and edges[-1] == b
    assert all(seen[c] > 0 for c in PARENT), seen  # detours and hop delays included


def test_slices_are_the_records_on_rank_0s_clock(cli, run_dir, tmp_path):
    _, doc = trace(cli, run_dir, tmp_path / "t.json")
    for info in doc["otherData"]["points"]:
        point = run_dir / "points" / info["folder"]
        by = {(e["tid"], e["cat"], e["args"]["step"], e["args"]["site"]): e
              for e in slices(doc, info["pid"]) if "site" in e["args"]}
        arrive = {}
        for r, (cols, meta) in enumerate(records(point)):
            m = cols["site"] >= 0
            c = {k: v[m] for k, v in cols.items()}
            t0 = info["t0_ns"]
            for i in range(int(m.sum())):
                key = (int(c["step"][i]), int(c["site"][i]))
                wait = by[(r, "wait", *key)]
                start, done = (int(aligned(c[k][i], meta)) - t0
                               for k in ("t_arrive_ns", "t_done_ns"))
                assert ns(wait["ts"]) == start and ns(wait["ts"]) + ns(wait["dur"]) == done
                compute = c["t_arrive_ns"][i] - c["t_start_ns"][i] - c["delay_ns"][i] \
                    - c["detour_ns"][i]
                for cat, want in (("compute", compute), ("delay", c["delay_ns"][i]),
                                  ("detour", c["detour_ns"][i])):
                    got = by.get((r, cat, *key))
                    assert (ns(got["dur"]) if got else 0) == want, (cat, key)
                arrive.setdefault(key, []).append(start)
        skew_records = {k: max(v) - min(v) for k, v in arrive.items()}
        waits = defaultdict(list)
        for (_, cat, step, site), e in by.items():
            if cat == "wait":
                waits[step, site].append(ns(e["ts"]))
                assert e["args"]["skew_wait_ns"] == max(arrive[step, site]) - ns(e["ts"])
        assert {k: max(v) - min(v) for k, v in waits.items()} == skew_records
        assert len(skew_records) == STEPS * N_SITES and max(skew_records.values()) > 0


def sends_in(point: Path, calls: range) -> dict[int, list[int]]:
    """Each rank's sends' post times (rank 0's clock) in the calls ``calls``."""
    out = {}
    for r in range(2):
        h, _ = read_rank_file(point / f"hops-{r:05d}.parquet")
        meta = read_rank_file(point / f"rank-{r:05d}.parquet")[1]
        m = (h["direction"] == 0) & np.isin(h["call"], list(calls))
        out[r] = sorted(int(t) for t in aligned(h["t_post_ns"][m], meta))
    return out


def flows(doc: dict, pid: int) -> dict[int, dict[str, dict]]:
    out: dict[int, dict[str, dict]] = defaultdict(dict)
    for e in doc["traceEvents"]:
        if e["ph"] in ("s", "f") and e["pid"] == pid:
            assert e["ph"] not in out[e["id"]], e  # one start and one finish per id
            out[e["id"]][e["ph"]] = e
    return out


def test_every_message_is_one_flow_from_its_send_to_its_receive(cli, run_dir, tmp_path):
    _, doc = trace(cli, run_dir, tmp_path / "t.json")
    for info in doc["otherData"]["points"]:
        point = run_dir / "points" / info["folder"]
        pairs = flows(doc, info["pid"])
        assert all(p.keys() == {"s", "f"} for p in pairs.values())
        assert all(p["s"]["tid"] != p["f"]["tid"] and p["s"]["ts"] <= p["f"]["ts"]
                   for p in pairs.values())
        # the recorded steps' calls only (warm-up calls first): one flow per send
        sends = sends_in(point, range(WARMUP * N_SITES, (WARMUP + STEPS) * N_SITES))
        for r in range(2):
            starts = sorted(ns(p["s"]["ts"]) + info["t0_ns"] for p in pairs.values()
                            if p["s"]["tid"] == r)
            assert starts == sends[r] and len(starts) == 2 * STEPS * N_SITES


def test_steps_bounds_the_trace(cli, run_dir, tmp_path):
    _, doc = trace(cli, run_dir, tmp_path / "t.json", "--steps", "2:4")
    assert {e["name"] for e in slices(doc) if e["cat"] == "step"} == {"step 2", "step 3"}
    assert {e["args"]["step"] for e in slices(doc) if "step" in e["args"]} == {2, 3}
    assert doc["otherData"]["steps"] == "2:4" and doc["otherData"]["note"] is None
    info = doc["otherData"]["points"][0]
    sends = sends_in(run_dir / "points" / info["folder"],
                     range((WARMUP + 2) * N_SITES, (WARMUP + 4) * N_SITES))
    starts = sorted(ns(p["s"]["ts"]) + info["t0_ns"] for p in flows(doc, 1).values())
    assert starts == sorted(sends[0] + sends[1])


def test_the_default_cap_cuts_whole_steps_and_says_so(cli, run_dir, tmp_path, monkeypatch):
    import experiments.trace

    cap = 500
    monkeypatch.setattr(experiments.trace, "MAX_EVENTS", cap)
    res, doc = trace(cli, run_dir, tmp_path / "t.json")
    note = doc["otherData"]["note"]
    assert res.stderr == f"jitterlab: note: {note}\n" and f"{cap:,} events" in note
    kept = sorted({e["args"]["step"] for e in slices(doc) if "step" in e["args"]})
    k = len(kept)
    assert kept == list(range(k)) and 0 < k < STEPS and doc["otherData"]["steps"] == f"0:{k}"
    events = [e for e in doc["traceEvents"] if e["ph"] != "M"]
    _, more = trace(cli, run_dir, tmp_path / "more.json", "--steps", f"0:{k + 1}")
    assert len(events) <= cap < sum(e["ph"] != "M" for e in more["traceEvents"])
    assert more["otherData"]["note"] is None  # --steps is exact: no cap


def shifted_copy(point: Path, dest: Path, offset: dict | None, shift_ns: int) -> Path:
    """The point without its summary, rank 1's clock ahead by ``shift_ns`` and its file's
    clock fields ``offset``."""
    shutil.copytree(point, dest, ignore=shutil.ignore_patterns("summary.json"))
    for name in ("rank-00001.parquet", "hops-00001.parquet"):
        cols, meta = read_rank_file(dest / name)
        for k in cols:
            if k.startswith("t_") and k.endswith("_ns"):
                cols[k] = cols[k] + shift_ns
        write_rank_file(dest / name, cols, {**meta, **(offset if name.startswith("rank")
                                                      else {})})
    return dest


def test_a_hop_log_on_another_clock_than_the_sites_is_left_out_not_misnested(cli, run_dir,
                                                                             tmp_path):
    # CUDA runs: sites are stream events, the hop log the host clock, which runs ahead
    point = point_of(run_dir, "link")
    _, want = trace(cli, point, tmp_path / "want.json")
    ahead = shutil.copytree(point, tmp_path / "ahead", ignore=shutil.ignore_patterns(
        "summary.json"))
    cols, meta = read_rank_file(ahead / "hops-00001.parquet")
    recs, _ = read_rank_file(ahead / "rank-00001.parquet")
    arrivals = np.sort(recs["t_arrive_ns"][recs["site"] >= 0])
    # each call's first pattern step moved to start 5 us before its collective's arrival
    # (the latest arrival before the step was ready): outside its wait, by a margin that
    # does not depend on how busy the host was
    first = np.flatnonzero(cols["step"] == 0)
    ready = cols["t_post_ns"][first] - cols["delay_ns"][first]
    shift = ready - arrivals[np.searchsorted(arrivals, ready, side="right") - 1] + 5_000
    for k in ("t_post_ns", "t_done_ns"):
        cols[k] = cols[k].copy()
        cols[k][first] -= shift
    write_rank_file(ahead / "hops-00001.parquet", cols, meta)
    res, doc = trace(cli, ahead, tmp_path / "ahead.json")
    _, seen = nested(doc)
    _, seen_want = nested(want)
    assert 0 < seen["pattern"] < seen_want["pattern"]
    assert "ahead rank 1: " in res.stderr and "pattern steps of its hop log lie outside " \
        "their collective's wait" in res.stderr
    assert not any("rank 0" in n for n in doc["otherData"]["clock_notes"])
    assert all(p.keys() == {"s", "f"} for p in flows(doc, 1).values())
    assert 0 < len(flows(doc, 1)) < len(flows(want, 1))


def test_each_rank_is_put_on_rank_0s_clock(cli, run_dir, tmp_path):
    point = point_of(run_dir, "link")
    _, want = trace(cli, point, tmp_path / "want.json")
    shift = 3_600_000_000_007  # an hour and 7 ns ahead
    fields = {"clock_offset_ns": -shift, "clock_offset_before_ns": -shift,
              "clock_offset_after_ns": -shift, "clock_offset_before_t_ns": 1,
              "clock_offset_after_t_ns": 2}
    moved = shifted_copy(point, tmp_path / "moved", fields, shift)
    _, got = trace(cli, moved, tmp_path / "got.json")

    def events(doc: dict) -> list[dict]:
        return [e for e in doc["traceEvents"] if e["ph"] != "M"]

    assert events(got) == events(want) and len(events(want)) > 100
    unknown = {k: None for k in fields}
    lost = shifted_copy(point, tmp_path / "lost", unknown, shift)
    res, doc = trace(cli, lost, tmp_path / "lost.json")
    assert "rank 1: clock offset to rank 0 unknown" in res.stderr
    assert doc["otherData"]["clock_notes"] and events(doc) != events(want)


@pytest.mark.parametrize("where,steps,message", [
    ("nowhere", None, "RUN_OR_POINT_DIR: '{dir}' does not exist"),
    ("empty", None, "RUN_OR_POINT_DIR: '{dir}' holds no records (no rank-NNNNN.parquet "
                    "here nor in points/<id>/)"),
    ("run", "5:2", "--steps: expected A:B, integers with 0 <= A < B, got '5:2'"),
    ("run", "x", "--steps: expected A:B, integers with 0 <= A < B, got 'x'"),
    ("run", "3", "--steps: expected A:B, integers with 0 <= A < B, got '3'"),
    ("run", "2:", "--steps: expected A:B, integers with 0 <= A < B, got '2:'"),
    ("run", "1_0:20", "--steps: expected A:B, integers with 0 <= A < B, got '1_0:20'"),
    ("run", "=-1:3", "--steps: expected A:B, integers with 0 <= A < B, got '-1:3'"),
    ("run", "100:200", "--steps: '100:200' holds no recorded step (recorded: 0:6)"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(cli, run_dir, tmp_path, where,
                                                         steps, message):
    src = {"nowhere": tmp_path / "nope", "empty": tmp_path / "empty", "run": run_dir}[where]
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out" / "t.json"
    out.parent.mkdir()
    out.write_text("old")
    opts = [] if steps is None else [f"--steps{steps}"] if steps[0] == "=" else ["--steps", steps]
    res = cli("trace", str(src), "--out", str(out), *opts)
    assert res.returncode == 2
    assert res.stderr == f"jitterlab: error: {message.format(dir=src)}\n"
    assert out.read_text() == "old" and os.listdir(out.parent) == ["t.json"]
