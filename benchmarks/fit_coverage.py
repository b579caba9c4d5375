"""How often ``jitterlab fit``'s 95% intervals cover the truth, and how often BIC picks the
true family, over repeated seeded trials (jitter_models/fit.py).

    .venv/bin/python benchmarks/fit_coverage.py [--trials 200] [--n 2000] [--bootstrap 199]

For each law the issue names (a lognormal, a gamma, a shifted exponential and a 2% spike
mixture), ``trials`` samples of size ``n`` are drawn (seed = the trial), fitted with every
candidate (the true family's bootstrap gives its intervals), and the table shows, per
parameter, the share of trials whose interval holds the true value, with its binomial
standard error; and the share of trials whose best (lowest BIC) is the true family.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from jitter_models.fit import fit_one  # noqa: E402
from jitter_models.fitters import FITTERS  # noqa: E402

US = 1e-6
LAWS = {
    "lognormal": {"median": 50 * US, "sigma": 0.5},
    "gamma": {"shape": 2.0, "mean": 30 * US},
    "shifted(exponential)": {"shift": 10 * US, "mean": 20 * US},
    "mixture": {"weight": 0.02, "median": 50 * US, "sigma": 0.1, "spike_median": 1000 * US,
                "spike_sigma": 0.2},
}


def _trial(args: tuple) -> tuple[str, dict[str, bool], str]:
    family, trial, n, boot = args
    f, truth = FITTERS[family], LAWS[family]
    x = f.sample(np.random.default_rng([trial, list(LAWS).index(family)]), truth, n)
    mine = fit_one(f, x, [trial, 99], boot)
    covered = {k: bool(lo <= truth[k] <= hi) for k, (lo, hi) in mine.intervals.items()}
    bic = {name: fit_one(g, x, 0, 0).bic for name, g in FITTERS.items()}
    return family, covered, min(bic, key=bic.get)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--bootstrap", type=int, default=199)
    args = ap.parse_args()
    work = [(fam, t, args.n, args.bootstrap) for fam in LAWS for t in range(args.trials)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        done = list(pool.map(_trial, work, chunksize=4))
    print(f"{args.trials} trials per law, n = {args.n}, {args.bootstrap} bootstrap "
          f"replicates, 95% intervals; {time.perf_counter() - t0:.0f} s")
    print(f"{'law':22s} {'parameter':13s} {'coverage':>9s} {'± se':>6s}   best by BIC")
    for fam in LAWS:
        mine = [d for d in done if d[0] == fam]
        right = sum(d[2] == fam for d in mine) / len(mine)
        for k in LAWS[fam]:
            c = np.mean([d[1][k] for d in mine])
            se = math.sqrt(c * (1 - c) / len(mine)) if 0 < c < 1 else 0.0
            print(f"{fam:22s} {k:13s} {c:9.3f} {se:6.3f}   {right:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
