"""``jitterlab trace``: a point's (or a whole run's) records as Chrome trace-event JSON,
for Perfetto (ui.perfetto.dev) and chrome://tracing.

Layout: one process per point (pid 1, 2, ... in the order of the points' ids), named by
its schedule, world size and batch; one thread per rank (tid = rank). On each rank:

- ``step K`` [t_start, t_done) of the step row (site -1);
- inside it, per site, ``site S`` [t_start, t_done), tiled by
  ``compute`` [t_start, t_delay), ``delay`` [t_delay, t_delay + delay_ns),
  ``detour`` [t_delay + delay_ns, t_arrive) and ``<collective> wait`` [t_arrive, t_done),
  with t_delay = t_arrive - delay_ns - detour_ns: where ``SiteTimer`` read the clock at
  the end of compute. The rank really spent its detour time in the injector after
  compute (the timer emulates a preemption by extending the arrival deadline), so the
  detour slice is where that time went on the clock; where the detours fell on the
  schedule's own time axis (overlapping compute) the records do not say;
- with hop logs (``record_hops``), inside the wait: ``<algorithm> step K`` per pattern
  step [ready, done), ``hop delay`` [ready, post) per send the schedule delayed, and a
  flow arrow from each send's post to the completion of the pattern step that received
  it on the peer (sends and receives matched by op, site, call, pattern step, source,
  destination and order). Messages of calls outside the recorded steps (warm-up) are
  left out: a message belongs to the site whose collective was running on its rank. A
  pattern step that does not lie inside its wait (a host-clock hop log beside CUDA-event
  sites) is left out too, with its messages, and a note says so.

Times: each rank's records on rank 0's clock (``collectives.clocks.aligned``: its rank
file's offset, interpolated between the estimates before and after the run), then
relative to the point's first recorded time (``t0_ns``, rank 0's clock, in the trace's
metadata), in µs with ns resolution. Each point starts at 0, so points overlay.

Heavy imports (collectives, jitter_models: scipy) happen in the functions: the CLI's
``--help`` reads ``MAX_EVENTS`` from here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

MAX_EVENTS = 200_000
"""Without ``--steps``: whole steps from the first, while the events stay within this."""
_DEPTH = {"step": 0, "site": 1, "compute": 2, "delay": 2, "detour": 2, "wait": 2,
          "pattern": 3, "hop": 4}


def _bad(message: str) -> ValueError:
    from jitter_models.errors import BadInput

    return BadInput(message)


def parse_steps(text: str) -> tuple[int, int]:
    """``A:B``, half-open, integers with 0 <= A < B."""
    lo, sep, hi = text.partition(":")
    digits = all(x.isascii() and x.isdigit() and len(x) < 19 for x in (lo, hi))
    a, b = (int(lo), int(hi)) if digits else (-1, -1)  # (int() alone takes "1_0", " +1")
    if not sep or a < 0 or b <= a:
        raise _bad(f"--steps: expected A:B, integers with 0 <= A < B, got {text!r}")
    return a, b


class Point:
    """One point's records, aligned: [rank, row] grids of its site rows, its step rows
    and its messages (hop logs)."""

    def __init__(self, folder: Path, label: str):
        from collectives.timing import read_rank_file

        from .analysis import _site_grid

        self.folder, self.label = folder, label
        files = sorted(folder.glob("rank-*.parquet"))
        names = [f"rank-{r:05d}.parquet" for r in range(len(files))]
        if [f.name for f in files] != names:
            raise _bad(f"RUN_OR_POINT_DIR: {str(folder)!r}: rank files are not "
                       f"rank-00000 .. rank-{len(files) - 1:05d}")
        read = [_read(read_rank_file, f) for f in files]
        tables, metas = [t for t, _ in read], [m for _, m in read]
        try:
            g = _site_grid(tables)
        except ValueError as exc:
            raise _bad(f"RUN_OR_POINT_DIR: {str(folder)!r}: {exc}") from None
        self.n_ranks = len(tables)
        self.ops = [tuple(o) for o in metas[0].get("ops") or [("collective", "native")]]
        self.clocks = [_clock(m, f) for m, f in zip(metas, files)]
        self.notes = [f"{folder.name} rank {r}: clock offset to rank 0 unknown; its times "
                      "are on its own clock" for r, c in enumerate(self.clocks) if c is None]
        self._align = [lambda t, c=c: _aligned(t, c) for c in self.clocks]
        raw = {"start": g["t_start_ns"], "delay": g["t_arrive_ns"] - g["delay_ns"] -
               g["detour_ns"], "detour": g["t_arrive_ns"] - g["detour_ns"],
               "arrive": g["t_arrive_ns"], "done": g["t_done_ns"]}
        self.t = {k: np.stack([self._align[r](v[r]) for r in range(self.n_ranks)])
                  for k, v in raw.items()}
        self.g = g
        steps = [np.asarray(t["site"]) == -1 for t in tables]
        self.step_rows = [{int(s): (int(a), int(b)) for s, a, b in zip(
            np.asarray(t["step"])[m], self._align[r](np.asarray(t["t_start_ns"])[m]),
            self._align[r](np.asarray(t["t_done_ns"])[m]))}
            for r, (t, m) in enumerate(zip(tables, steps))]
        starts = [int(self.t["start"].min())] + [a for rows in self.step_rows
                                                 for a, _ in rows.values()]
        self.t0_ns = min(starts)
        self.by_step: dict[int, np.ndarray] = {}
        step0 = g["step"][0]
        for s in np.unique(step0):
            self.by_step[int(s)] = np.flatnonzero(step0 == s)
        self.steps = sorted(set(self.by_step) | {s for rows in self.step_rows for s in rows})
        self.skew = self.t["arrive"].max(axis=0) - self.t["arrive"]
        hops = [folder / f"hops-{r:05d}.parquet" for r in range(self.n_ranks)]
        have = [h.is_file() for h in hops]
        if any(have) and not all(have):
            self.notes.append(f"{folder.name}: hop logs of ranks "
                              f"{[r for r, h in enumerate(have) if not h]} missing; no "
                              "messages shown")
        self.hop_events = (self._hops([_read(read_rank_file, h)[0] for h in hops])
                           if all(have) else {})

    def _hops(self, logs: list[dict[str, np.ndarray]]) -> dict[int, list[dict]]:
        """Pattern-step and hop-delay slices and flow arrows, by the step of their site."""
        out: dict[int, list[dict]] = {}
        sends: dict[tuple[int, ...], tuple[int, int, int]] = {}
        recvs: list[tuple[tuple[int, ...], int, int]] = []
        for r, h in enumerate(logs):
            where = self._sites_of(r, h["t_post_ns"])
            post = self._align[r](h["t_post_ns"])
            ready = self._align[r](np.where(h["direction"] == 0,
                                            h["t_post_ns"] - h["delay_ns"], h["t_post_ns"]))
            done = self._align[r](h["t_done_ns"])
            groups: dict[tuple[int, ...], list[int]] = {}
            seen: dict[tuple[int, ...], int] = {}
            msgs: dict[int, tuple[int, ...]] = {}
            for i in np.flatnonzero(where >= 0):
                head = tuple(int(h[k][i]) for k in ("op", "site", "call", "step"))
                groups.setdefault(head, []).append(int(i))
                peer = int(h["peer"][i])
                ends = (r, peer) if h["direction"][i] == 0 else (peer, r)
                key = (*head, *ends, int(h["direction"][i]))
                seen[key] = seen.get(key, -1) + 1
                msgs[int(i)] = (*head, *ends, seen[key])
            outside = 0
            for (op, _, call, k), rows in groups.items():
                m = int(where[rows[0]])
                a, b = int(ready[rows].min()), int(done[rows].max())
                # The hop log reads the host clock; on CUDA the sites are stream events,
                # which the host runs ahead of: a pattern step outside its collective's
                # wait would overlap compute or delay, which no viewer nests.
                if not self.t["arrive"][r][m] <= a <= b <= self.t["done"][r][m]:
                    outside += 1
                    continue
                for i in rows:
                    if h["direction"][i] == 0:
                        sends[msgs[i]] = (r, int(post[i]), int(where[i]))
                    else:
                        recvs.append((msgs[i], r, int(done[i])))
                s, base = self._base(m, r)
                algo = self.ops[op][1] if op < len(self.ops) else "pattern"
                ev = out.setdefault(s, [])
                ev.append(self._slice(f"{algo} step {k}", "pattern", r, a, b, {
                    **base, "call": call, "pattern_step": k,
                    "sends_to": [int(h["peer"][i]) for i in rows if h["direction"][i] == 0],
                    "receives_from": [int(h["peer"][i]) for i in rows
                                      if h["direction"][i] == 1]}))
                for i in rows:
                    if h["direction"][i] == 0 and h["delay_req_ns"][i] > 0:
                        ev.append(self._slice("hop delay", "hop", r, int(ready[i]),
                                              int(post[i]), {
                                                  "dst": int(h["peer"][i]),
                                                  "bytes": int(h["bytes"][i]),
                                                  "delay_req_ns": int(h["delay_req_ns"][i]),
                                                  "delay_ns": int(h["delay_ns"][i])}))
            if outside:
                self.notes.append(f"{self.folder.name} rank {r}: {outside} of "
                                  f"{len(groups)} pattern steps of its hop log lie outside "
                                  "their collective's wait (hop times on another clock than "
                                  "the sites'): left out, with their messages")
        for msg, dst, t_done in recvs:
            if msg not in sends:
                continue
            # One call is one site on every rank (the ranks' site rows are the same):
            # the send's step is the receive's.
            src, t_post, m = sends[msg]
            flow = {"name": "message", "cat": "hop", "id": msg}
            out.setdefault(int(self.g["step"][0][m]), []).extend((
                {"ph": "s", **flow, "tid": src, "ts": self._us(t_post)},
                {"ph": "f", "bp": "e", **flow, "tid": dst, "ts": self._us(t_done)}))
        return out

    def _sites_of(self, r: int, t_raw: np.ndarray) -> np.ndarray:
        """The site row (grid column) whose collective was running on rank ``r`` at each
        time of its own clock (-1: none, e.g. a warm-up call)."""
        arrive, done = self.g["t_arrive_ns"][r], self.g["t_done_ns"][r]
        order = np.argsort(arrive, kind="stable")
        i = np.searchsorted(arrive[order], t_raw, side="right") - 1
        col = order[np.clip(i, 0, None)]
        return np.where((i >= 0) & (t_raw <= done[col]), col, -1)

    def _us(self, t_ns: int) -> float:
        return (t_ns - self.t0_ns) / 1000

    def _slice(self, name: str, cat: str, tid: int, a: int, b: int, args: dict) -> dict:
        a, b = int(a), int(b)
        return {"ph": "X", "name": name, "cat": cat, "tid": tid, "ts": self._us(a),
                "dur": (b - a) / 1000, "args": args}

    def _base(self, m: int, r: int) -> tuple[int, dict[str, int]]:
        g = self.g
        s = int(g["step"][r][m])
        return s, {"step": s, "site": int(g["site"][r][m]), "bytes": int(g["bytes"][r][m]),
                   "delay_req_ns": int(g["delay_req_ns"][r][m])}

    def step_events(self, s: int) -> list[dict]:
        """Every event of step ``s`` (without pid)."""
        ev = []
        for r, rows in enumerate(self.step_rows):
            if s in rows:
                ev.append(self._slice(f"step {s}", "step", r, *rows[s], {"step": s}))
        t, g = self.t, self.g
        for m in self.by_step.get(s, ()):
            for r in range(self.n_ranks):
                _, base = self._base(m, r)
                op = int(g["op"][r][m])
                coll, algo = self.ops[op] if op < len(self.ops) else ("collective", "?")
                ev.append(self._slice(f"site {base['site']}", "site", r, t["start"][r][m],
                                      t["done"][r][m], {
                                          **base, "collective": coll, "algorithm": algo,
                                          "delay_ns": int(g["delay_ns"][r][m]),
                                          "detour_ns": int(g["detour_ns"][r][m])}))
                for name, a, b in (("compute", "start", "delay"), ("delay", "delay", "detour"),
                                   ("detour", "detour", "arrive")):
                    if t[b][r][m] > t[a][r][m]:
                        ev.append(self._slice(name, name, r, t[a][r][m], t[b][r][m], base))
                ev.append(self._slice(f"{coll} wait", "wait", r, t["arrive"][r][m],
                                      t["done"][r][m], {
                                          **base, "skew_wait_ns": int(self.skew[r][m])}))
        return ev + list(self.hop_events.get(s, ()))

    def metadata(self, pid: int) -> list[dict]:
        ev = [{"ph": "M", "name": "process_name", "pid": pid, "args": {"name": self.label}},
              {"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": pid}}]
        for r in range(self.n_ranks):
            ev += [{"ph": "M", "name": "thread_name", "pid": pid, "tid": r,
                    "args": {"name": f"rank {r}"}},
                   {"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": r,
                    "args": {"sort_index": r}}]
        return ev


def _read(reader: Any, path: Path) -> tuple[dict, dict]:
    try:
        return reader(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds
        raise _bad(f"RUN_OR_POINT_DIR: {str(path)!r} does not read back "
                   f"({type(exc).__name__})") from None


def _clock(meta: dict, path: Path) -> dict | None:
    """The rank file's clock fields, or None where its offset is unknown."""
    from collectives.clocks import aligned

    try:
        return meta if aligned(np.zeros(1, dtype=np.int64), meta) is not None else None
    except ValueError as exc:  # estimates that contradict each other
        raise _bad(f"RUN_OR_POINT_DIR: {str(path)!r}: {exc}") from None


def _aligned(t: np.ndarray, clock: Any) -> np.ndarray:
    from collectives.clocks import aligned

    t = np.asarray(t, dtype=np.int64)
    return t if clock is None else aligned(t, clock)


def find_points(path: Path) -> list[tuple[Path, str]]:
    """(folder, label) of each point under ``path``: a point folder itself (it holds
    rank files) or a run folder's ``points/<id>/``, verified against its summary."""
    from .store import check_point

    if not path.exists():
        raise _bad(f"RUN_OR_POINT_DIR: {str(path)!r} does not exist")
    if not path.is_dir():
        raise _bad(f"RUN_OR_POINT_DIR: {str(path)!r} is not a folder")
    if any(path.glob("rank-*.parquet")):
        folders = [path]
    elif (path / "points").is_dir():
        folders = sorted(p for p in (path / "points").iterdir() if p.is_dir()
                         and not p.name.startswith(".") and any(p.glob("rank-*.parquet")))
    else:
        folders = []
    if not folders:
        raise _bad(f"RUN_OR_POINT_DIR: {str(path)!r} holds no records (no rank-NNNNN.parquet "
                   "here nor in points/<id>/)")
    out = []
    for f in folders:
        if (f / "summary.json").exists():
            s = check_point(f)
            out.append((f, f"{s['schedule']} N={s['world_size']} batch={s['batch']} "
                           f"[{f.name}]"))
        else:
            out.append((f, f"{f.name} N={len(list(f.glob('rank-*.parquet')))}"))
    return out


def build_trace(path: str | Path, steps: tuple[int, int] | None = None,
                max_events: int = MAX_EVENTS) -> tuple[dict[str, Any], str | None]:
    """The trace document and the note of a cut (None when nothing was cut). ``steps``:
    [A, B), exactly; None: every step, up to ``max_events`` events (whole steps, at least
    one)."""
    path = Path(path)
    points = [Point(f, label) for f, label in find_points(path)]
    recorded = sorted(set().union(*(p.steps for p in points)))
    if not recorded:
        raise _bad(f"RUN_OR_POINT_DIR: {str(path)!r} holds no recorded steps")
    if steps is not None and not any(steps[0] <= s < steps[1] for s in recorded):
        raise _bad(f"--steps: '{steps[0]}:{steps[1]}' holds no recorded step (recorded: "
                   f"{recorded[0]}:{recorded[-1] + 1})")
    lo, hi = steps if steps is not None else (recorded[0], recorded[-1] + 1)
    events: list[dict] = []
    note, last = None, lo
    for s in (s for s in recorded if lo <= s < hi):
        new = [{**e, "pid": pid} for pid, p in enumerate(points, 1) for e in p.step_events(s)]
        if steps is None and events and len(events) + len(new) > max_events:
            note = (f"trace: the default cap of {max_events:,} events cut it after step "
                    f"{last - 1}: steps {lo}:{last} of {lo}:{hi}; choose others with --steps")
            break
        events += new
        last = s + 1
    flows: dict[tuple[int, tuple[int, ...]], int] = {}
    for e in events:  # a number per message, in the order of the sends
        if e["ph"] in ("s", "f"):
            e["id"] = flows.setdefault((e["pid"], e["id"]), len(flows) + 1)
    events.sort(key=lambda e: (e["pid"], e["tid"], e["ts"], -e.get("dur", 0),
                               _DEPTH.get(e["cat"], 5)))
    meta = [m for pid, p in enumerate(points, 1) for m in p.metadata(pid)]
    doc = {"traceEvents": meta + events, "displayTimeUnit": "ns", "otherData": {
        "tool": "jitterlab trace", "source": str(path.resolve()), "steps": f"{lo}:{last}",
        "steps_recorded": f"{recorded[0]}:{recorded[-1] + 1}",
        "max_events": max_events if steps is None else None, "note": note,
        "clock": "every rank on rank 0's clock (collectives.clocks.aligned), ts relative "
                 "to each point's t0_ns, in us",
        "slices": "site = compute + delay + detour + wait; detour placed after the delay "
                  "(the rank waited it out there); wait = t_arrive .. t_done",
        "clock_notes": [n for p in points for n in p.notes],
        "points": [{"pid": pid, "folder": p.folder.name, "label": p.label,
                    "world_size": p.n_ranks, "t0_ns": p.t0_ns,
                    "hop_log": bool(p.hop_events)} for pid, p in enumerate(points, 1)]}}
    return doc, note


def cmd_trace(args: argparse.Namespace) -> int:
    from .atomic import check_writable, write_text_atomic

    steps = parse_steps(args.steps) if args.steps is not None else None
    check_writable(args.out, "--out")
    doc, note = build_trace(args.input, steps, MAX_EVENTS)
    lines = ",\n".join(json.dumps(e, separators=(",", ":"), allow_nan=False)
                       for e in doc["traceEvents"])
    rest = json.dumps({k: v for k, v in doc.items() if k != "traceEvents"}, allow_nan=False)
    write_text_atomic(args.out, '{"traceEvents":[\n' + lines + "\n],\n" + rest[1:] + "\n")
    for n in doc["otherData"]["clock_notes"]:
        print(f"jitterlab: note: {n}", file=sys.stderr)
    if note:
        print(f"jitterlab: note: {note}", file=sys.stderr)
    info = doc["otherData"]
    n_events = sum(e["ph"] != "M" for e in doc["traceEvents"])
    print(f"trace: {args.out} ({n_events} events, {len(info['points'])} point(s), steps "
          f"{info['steps']}); open it in ui.perfetto.dev or chrome://tracing")
    return 0
