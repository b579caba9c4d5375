"""The exact law of one rank's lag under detours for a fixed amount of work
(``Detours.lag_survival``), which the simulator's approximation past its rank-by-rank
cutoff draws the max of N from (``max_of_lags``).

lag(x) = ``end(x, work) - x`` at a uniform position x of the pattern is piecewise linear
in x: constant while x and the work's end are both outside detours and no detour start is
crossed (the detours in between are the same), slope -1 while x is inside a detour (the
work waits for its end). The pieces' bounds are the detours' starts and ends and the
positions from which the work ends exactly at a detour's start. Each constant piece is an
atom of the lag's law (its length / period), each sloped piece a uniform stretch: exact
whatever the number of detours (a measured trace has thousands a period).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np


def lag_survival(d: Any, work_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(l, P(lag > l)) on a sorted grid of l for detours ``d`` (a ``Detours``), P linear
    between consecutive grid points (a jump is a pair of points)."""
    period, w = d.period_s, float(work_s)
    if d._starts.size == 0:
        return np.array([np.nextafter(w, -np.inf), w]), np.array([1.0, 0.0])
    per_period = period - d._busy[-1]
    v = np.mod(d._work_at_start - w, per_period)  # work clock w before each start
    k = np.searchsorted(d._work_at_start, v, side="left")
    crossing = np.mod(v + d._busy[k], period)
    cuts = np.unique(np.concatenate([[0.0, period], d._starts, d._ends,
                                     crossing]))
    a, b = cuts[:-1], cuts[1:]
    keep = b > a
    a, b = a[keep], b[keep]
    mid = (a + b) / 2
    ends = d.end(mid, w, 0.0)
    i = np.maximum(np.searchsorted(d._starts, mid, side="right") - 1, 0)
    inside = (mid >= d._starts[i]) & (mid < d._ends[i])
    mass = (b - a) / period
    atoms, atom_mass = (ends - mid)[~inside], mass[~inside]
    lo, hi, seg_mass = (ends - b)[inside], (ends - a)[inside], mass[inside]
    # atoms: P(lag > l) steps down by each atom's mass at its value
    order = np.argsort(atoms)
    atoms, atom_mass = atoms[order], atom_mass[order]
    tail = np.concatenate([np.cumsum(atom_mass[::-1])[::-1], [0.0]])  # mass >= atom i
    # uniform stretches: P(lag > l) from them is piecewise linear, its slope changing
    # at each stretch's ends
    pts = np.concatenate([lo, hi])
    slope = np.concatenate([-seg_mass / (hi - lo), seg_mass / (hi - lo)])
    o = np.argsort(pts, kind="stable")
    pts, slope = pts[o], np.cumsum(slope[o])
    seg_at = np.concatenate([[seg_mass.sum()], seg_mass.sum() + np.cumsum(
        slope[:-1] * np.diff(pts))]) if pts.size else np.zeros(0)
    grid = np.unique(np.concatenate([atoms, np.nextafter(atoms, -np.inf), pts]))

    def seg_sf(l: np.ndarray) -> np.ndarray:
        if pts.size == 0:
            return np.zeros(l.shape)
        return np.clip(np.interp(l, pts, seg_at, left=seg_mass.sum(), right=0.0), 0, 1)

    atom_sf = tail[np.searchsorted(atoms, grid, side="right")]
    sf = np.clip(atom_sf + seg_sf(grid), 0.0, 1.0)
    return grid, sf


@functools.lru_cache(maxsize=64)
def _law(d: Any, work_s: float) -> tuple[np.ndarray, np.ndarray]:
    """``lag_survival``, once per (detours, work): a step's sites of equal compute share it."""
    return lag_survival(d, work_s)


def max_of_lags(d: Any, groups: list[tuple[float, int]], rng: np.random.Generator,
                size: int) -> np.ndarray:
    """``size`` draws of the max over ranks of their lags, ``groups`` of (work, ranks):
    each rank's lag from the exact law of its group's fixed work, independent positions.
    The max solves h(l) = -log U with h(l) = -sum_g n_g log(1 - P_g(lag > l)): the interval
    of the laws' own breakpoints it lies in, then bisection in it, where every P_g is
    linear (exact up to float rounding; h itself is not linear there)."""
    laws = [_law(d, float(w)) for w, _ in groups]
    counts = [c for _, c in groups]

    def h_at(l: np.ndarray) -> np.ndarray:
        total = np.zeros(np.shape(l))
        for (g, sf), count in zip(laws, counts):
            p = np.minimum(np.interp(l, g, sf, left=1.0, right=0.0), 1.0)
            with np.errstate(divide="ignore"):  # p = 1 below the smallest lag: h = inf
                total -= count * np.log1p(-p)
        return total

    grid = np.unique(np.concatenate([g for g, _ in laws]))
    hg = h_at(grid)  # non-increasing in l
    target = -np.log(rng.random(size))
    i = np.clip(np.searchsorted(-hg, -target, side="left"), 0, grid.size - 1)
    lo, hi = grid[np.maximum(i - 1, 0)], grid[i].copy()  # h(lo) > target >= h(hi)
    for _ in range(60):
        mid = (lo + hi) / 2
        done = h_at(mid) <= target
        hi = np.where(done, mid, hi)
        lo = np.where(done, lo, mid)
    return hi
