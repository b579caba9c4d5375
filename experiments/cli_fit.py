"""``jitterlab fit SAMPLES``: every positive family fitted to measured latencies, ranked
(jitter_models/fit.py), written as schedules for ``run`` and ``simulate``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .cli_util import bad


def add_parser(sub) -> None:
    f = sub.add_parser(
        "fit", help="fit delay distributions to measured latencies (MLE, BIC, bootstrap)",
        description="Fit every positive family (exponential, gamma, lognormal, weibull, "
                    "pareto, each shifted by a fitted floor, and a two-lognormal spike "
                    "mixture) to latency samples by maximum likelihood; rank them by BIC, "
                    "test each by Anderson-Darling with a parametric-bootstrap p-value, "
                    "give bootstrap intervals and a tail check; write fit.json, fits.toml "
                    "([[jitter]] tables for run and simulate), QQ plots and a report.")
    f.add_argument("samples", help="a latency_us / latency_ns text file (the empirical "
                   "format), a rank-*.parquet records file, a bench run directory or a run "
                   "point directory")
    f.add_argument("--what", default="iteration", choices=["iteration", "delay"],
                   help="from records: per-iteration time (max over ranks of t_done - "
                        "t_start; default) or the achieved injected delays (delay_ns)")
    f.add_argument("--size", type=int, metavar="BYTES",
                   help="from records of several sizes: the collective size to take")
    f.add_argument("--bootstrap", type=int, default=None, metavar="B",
                   help="parametric-bootstrap replicates per candidate (default 199: "
                        "p-values to 0.005; 40,000 samples take about 15 s here)")
    f.add_argument("--seed", type=int, default=0, help="the bootstrap's seed (default 0)")
    f.add_argument("--jobs", type=int, default=None, metavar="J",
                   help="processes (default: the cores)")
    f.add_argument("--out", metavar="DIR", help="where to write (default runs/fit/<name>)")
    f.add_argument("--json", metavar="FILE", help="also write fit.json here")


def cmd_fit(args: argparse.Namespace) -> int:
    import numpy as np

    from jitter_models.fit import DEFAULT_BOOTSTRAP, fit_all

    from .fit_input import load
    from .fit_report import table_text, write_fit

    boot = DEFAULT_BOOTSTRAP if args.bootstrap is None else args.bootstrap
    if boot < 0 or boot > 10_000:
        raise bad(f"--bootstrap: must be in [0, 10000], got {boot}")
    if args.jobs is not None and args.jobs < 1:
        raise bad(f"--jobs: must be >= 1, got {args.jobs}")
    if args.size is not None and args.size < 0:
        raise bad(f"--size: must be >= 0 bytes, got {args.size}")
    x, source = load(args.samples, args.what, args.size)
    if args.json:
        from .atomic import check_writable

        check_writable(args.json, "--json")
    name = Path(args.samples.rstrip("/")).stem or "samples"
    out = Path(args.out) if args.out else Path("runs") / "fit" / name
    print(f"fit: {source}; {boot} bootstrap replicates per candidate (seed {args.seed})",
          file=sys.stderr)
    t0 = time.perf_counter()
    data = fit_all(x, seed=args.seed, bootstrap=boot, jobs=args.jobs,
                   progress=lambda text: print(f"{text} ({time.perf_counter() - t0:.1f} s)",
                                               file=sys.stderr))
    data.update({"name": name, "source": source, "what": args.what,
                 "min": float(x.min()), "median": float(np.median(x)),
                 "max": float(x.max())})
    write_fit(out, x, data, args.json)
    for w in data["warnings"]:
        print(f"jitterlab: warning: {w}", file=sys.stderr)
    print(table_text(data))
    print(f"best (BIC): {data['best']['dist']}")
    print(f"fit: {out / 'fit.json'}, {out / 'fits.toml'}, report {out / 'report.html'}")
    return 0
