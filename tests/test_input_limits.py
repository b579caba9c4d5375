"""Input and resource limits: ranks per host, files a user names, delays that overflow,
bad input that must exit 2 (or quietly), and writes that fail midway.

Anything that would hang or exhaust memory if the code regressed (a FIFO, /dev/zero, a
thousand ranks) runs in a subprocess with a timeout and a memory limit, or with the
process start replaced by a stub that fails the test. So does anything that needs a real
process (a closed stdout pipe, a resource limit, the signal handlers ``run`` installs);
other commands run as ``experiments.cli.main`` in this process (``cli``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

JITTERLAB = str(Path(sys.executable).with_name("jitterlab"))
MAX_DELAY_NS = 3_600_000_000_000
EFBIG = 27


def python(code: str, *args: str, cwd: Path | None = None, timeout: float = 60,
           memory_bytes: int | None = None) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter, under an address-space limit if given (so a
    regression that reads /dev/zero dies with MemoryError instead of taking the host)."""
    prelude = ""
    if memory_bytes is not None:
        prelude = ("import resource\nresource.setrlimit(resource.RLIMIT_AS, "
                   f"({memory_bytes}, {memory_bytes}))\n")
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=timeout)


def write_spec(path: Path, jitter: list[dict] | None = None, **over) -> Path:
    """A TOML spec: scalar and list keys as JSON literals (valid TOML too); a ``model``
    given as text is a preset name, as a dict an inline table."""
    doc = {"name": "t", "model": "tiny", "world_sizes": [1, 2], "compute": "none",
           "steps": 2, "warmup": 0, **over}
    lines = []
    for k, v in doc.items():
        if isinstance(v, dict):
            v = "{" + ", ".join(f"{a} = {json.dumps(b)}" for a, b in v.items()) + "}"
        else:
            v = json.dumps(v)
        lines.append(f"{k} = {v}")
    for j in jitter or [{"name": "none", "dist": "constant(0s)"}]:
        lines += ["[[jitter]]"] + [f"{k} = {json.dumps(v)}" for k, v in j.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


# --- input_files ----------------------------------------------------------------------


def test_input_files_lists_every_sample_file_of_nested_distributions(tmp_path):
    from jitter_models import input_files, parse, parse_schedule

    for name, unit in (("a.txt", "latency_us"), ("b.txt", "latency_ns"), ("c.txt", "latency_us")):
        (tmp_path / name).write_text(f"{unit}\n1\n2\n")
    a, b, c = (str(tmp_path / n) for n in ("a.txt", "b.txt", "c.txt"))
    s = parse_schedule(f"mixture(0.5*clip(empirical({a}), 1ms), 0.5*shifted(1us, empirical({a})));"
                       f" temporal=bursty(p_enter=0.1, p_exit=0.5, burst=empirical({b}));"
                       f" stragglers.ranks=1; stragglers.dist=empirical({c})")
    assert input_files(s) == [a, b, c]
    assert input_files(parse("lognormal(median=5us, sigma=0.5)")) == []
    assert input_files([parse(f"empirical({c})"), s]) == [c, a, b]


# --- ranks per host -------------------------------------------------------------------


def test_the_default_limit_is_a_multiple_of_the_cores_and_what_memory_allows():
    from launch.limits import RANK_MEMORY_BYTES, check_ranks_per_host, default_limit, host_limit

    assert default_limit(cores=2, memory_bytes=64 * RANK_MEMORY_BYTES).ranks == 8
    small = default_limit(cores=64, memory_bytes=10 * RANK_MEMORY_BYTES + 1)
    assert small.ranks == 10 and "memory" in small.why.split(";")[0]
    assert host_limit(100, env={}).ranks == 100
    assert host_limit(None, env={"JITTERLAB_MAX_RANKS_PER_HOST": "12"}).ranks == 12
    with pytest.raises(ValueError, match="JITTERLAB_MAX_RANKS_PER_HOST: must be an integer"):
        host_limit(None, env={"JITTERLAB_MAX_RANKS_PER_HOST": "lots"})
    with pytest.raises(ValueError) as info:
        check_ranks_per_host(9, "nproc", default_limit(cores=2, memory_bytes=2**40))
    assert str(info.value).startswith("nproc: 9 ranks on one host, over this host's limit "
                                      "of 8 (4 per core x 2 cores;")
    assert str(info.value).endswith("--max-ranks-per-host N allows more")


def test_bench_refuses_a_thousand_ranks_before_anything_starts(tmp_path, monkeypatch, capsys):
    from experiments import bench
    from experiments.cli import main

    def started(*args, **kwargs):
        raise AssertionError("ranks were started")

    monkeypatch.setattr(bench, "run_bench", started)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    code = main(["bench", "--launcher", "torchrun", "--nproc", "1000", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("jitterlab: error: nproc: 1000 ranks on one host, over this host's "
                          "limit of "), err
    assert "--max-ranks-per-host" in err and not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_run_refuses_a_4096_rank_point_on_one_host_before_anything_starts(tmp_path,
                                                                          monkeypatch, cli):
    spec = write_spec(tmp_path / "wide.toml", world_sizes=[1, 4096],
                      model={"name": "wide", "hidden": 256, "layers": 1, "heads": 4096,
                             "kv_heads": 4096, "ffn": 4096, "vocab": 64, "head_dim": 2})
    code = """
        import sys
        import experiments.sweep_loop
        def started(*a, **k):
            raise SystemExit("STARTED")
        experiments.sweep_loop.run_sweep = started
        from experiments.cli import main
        sys.exit(main(sys.argv[1:]))
    """
    res = python(code, "run", str(spec), cwd=tmp_path)
    assert "STARTED" not in res.stderr
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("jitterlab: error: world_sizes: 4096 ranks on one host, "
                                 "over this host's limit of "), res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wide.toml"]  # nothing written
    # validate starts nothing: it notes the host's limit (the spec may be meant for a
    # bigger host) and refuses only under an explicit --max-ranks-per-host.
    monkeypatch.chdir(tmp_path)
    res = cli("validate", str(spec))
    assert res.returncode == 0 and "note: not on this host: world_sizes: 4096 ranks on one " \
        "host" in res.stdout, res.stdout + res.stderr
    res = cli("validate", str(spec), "--max-ranks-per-host", "64")
    assert res.returncode == 2 and "world_sizes: 4096 ranks on one host" in res.stderr
    res = cli("validate", str(spec), "--max-ranks-per-host", "4096")
    assert res.returncode == 0 and "not on this host" not in res.stdout, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wide.toml"]


def test_a_multi_node_sweep_is_limited_by_its_ranks_per_node(tmp_path, monkeypatch, cli):
    spec = write_spec(tmp_path / "s.toml", world_sizes=[64, 128], ranks_per_node=64,
                      backend="gloo", model={"name": "m", "hidden": 256, "layers": 1,
                                             "heads": 128, "kv_heads": 128, "ffn": 1024,
                                             "vocab": 64, "head_dim": 2})
    monkeypatch.chdir(tmp_path)
    res = cli("validate", str(spec), "--nnodes", "2", "--max-ranks-per-host", "32")
    assert res.returncode == 2, res.stdout
    assert res.stderr.startswith("jitterlab: error: ranks_per_node: 64 ranks on one host")
    res = cli("validate", str(spec), "--nnodes", "2", "--max-ranks-per-host", "64")
    assert res.returncode == 0, res.stderr


# --- files a user names -----------------------------------------------------------------

# Each reads a non-regular file: a regression hangs (FIFO) or fills memory (/dev/zero), so
# each runs in a subprocess with a timeout and a 1.5 GiB address-space limit.
_READ_DIST = """
    import sys
    from jitter_models import parse
    try:
        parse(sys.argv[1])
    except ValueError as exc:
        print(exc)
"""


@pytest.mark.parametrize("which,kind", [("/dev/zero", "a character device"),
                                        ("fifo", "a FIFO (named pipe)"),
                                        ("dir", "a directory")])
def test_empirical_reads_regular_files_only(tmp_path, which, kind):
    path = {"fifo": tmp_path / "fifo", "dir": tmp_path}.get(which, Path(which))
    if which == "fifo":
        os.mkfifo(path)
    try:
        res = python(_READ_DIST, f"empirical({path})", timeout=30, memory_bytes=3 * 2**29)
    except subprocess.TimeoutExpired:
        pytest.fail(f"reading {which} did not return within 30 s")
    assert res.stdout.strip() == (f"empirical: file {str(path)!r}: is {kind}: only a "
                                  "regular file is read"), res.stderr[-500:]


@pytest.mark.parametrize("command", [["validate"], ["run"], ["maxtable", "--spec"]])
@pytest.mark.parametrize("which", ["/dev/zero", "fifo"])
def test_a_spec_that_is_a_device_or_a_fifo_is_bad_input(tmp_path, command, which):
    path = tmp_path / "fifo" if which == "fifo" else Path(which)
    if which == "fifo":
        os.mkfifo(path)
    code = "import sys\nfrom experiments.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    try:
        res = python(code, *command, str(path), cwd=tmp_path, timeout=30,
                     memory_bytes=3 * 2**29)
    except subprocess.TimeoutExpired:
        pytest.fail(f"jitterlab {' '.join(command)} {which} did not return within 30 s")
    kind = "a FIFO (named pipe)" if which == "fifo" else "a character device"
    assert res.returncode == 2, res.stderr[-500:]
    assert res.stderr == (f"jitterlab: error: spec {str(path)!r}: is {kind}: only a regular "
                          "file is read\n")


def test_a_sample_file_over_the_size_limit_is_refused_unread(tmp_path):
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:  # sparse: 300 MiB of size, no blocks
        f.write(b"latency_us\n")
        f.truncate(300 * 2**20)
    res = python(_READ_DIST, f"empirical({big})", timeout=60, memory_bytes=2**30)
    assert res.stdout.strip() == (f"empirical: file {str(big)!r}: {300 * 2**20} bytes, over "
                                  f"the limit of {256 * 2**20} bytes"), res.stderr[-500:]


def test_a_sample_file_over_the_sample_limit_is_refused(tmp_path, monkeypatch):
    from jitter_models import composite, parse

    monkeypatch.setattr(composite, "MAX_SAMPLES", 5)
    f = tmp_path / "s.txt"
    f.write_text("latency_us\n" + "1\n" * 6)
    with pytest.raises(ValueError, match=r"line 7: more than 5 samples$"):
        parse(f"empirical({f})")
    f.write_text("latency_us\n" + "1\n" * 5)
    assert parse(f"empirical({f})").mean() == pytest.approx(1e-6)


def test_errors_quote_a_line_number_and_a_short_escaped_excerpt_not_the_line(tmp_path):
    from jitter_models import parse

    secret = "root:x:0:0:root:/root:/bin/bash:" + "s3cr3t" * 20
    f = tmp_path / "passwd"
    f.write_text(secret + "\n")
    with pytest.raises(ValueError) as info:
        parse(f"empirical({f})")
    msg = str(info.value)
    assert msg == (f"empirical: file {str(f)!r}: line 1: the header must be latency_us or "
                   "latency_ns, got 'root:x:0:0:root:'...")
    f.write_text("latency_us\n1\n\x1b[31m" + "9" * 100 + "\n")
    with pytest.raises(ValueError) as info:
        parse(f"empirical({f})")
    assert str(info.value).endswith("line 3: not a number: '\\x1b[31m" + "9" * 11 + "'...")
    assert "\x1b" not in str(info.value)


# --- delays that overflow ---------------------------------------------------------------


@pytest.mark.parametrize("text,field,got", [
    ("constant(3601s)", "constant: value", "3601s"),
    ("constant(9223372036854775807ns)", "constant: value", "9223372036854776us"),
    ("uniform(0s, 2e4s)", "uniform: high", "2e4s"),
    ("shifted(7200s, exponential(1us))", "shifted: offset", "7200s"),
])
def test_durations_over_the_maximum_delay_are_rejected_at_parse_time(text, field, got):
    from jitter_models import parse

    with pytest.raises(ValueError) as info:
        parse(text)
    assert str(info.value) == (f"{field}: must be at most 3600s (the maximum delay, one "
                               f"hour), got {got}")
    assert str(parse("constant(3600s)")) == "constant(3600s)"


def test_unbounded_draws_are_clipped_at_the_maximum_delay_and_counted():
    from jitter_models import parse_schedule

    s = parse_schedule("pareto(alpha=0.1, scale=1us)")
    seconds = s.delays(7, 0, 0, 1, 1000, 10)
    ns, clipped = s.delays_ns(7, 0, 0, 1, 1000, 10)
    over = seconds > 3600
    # Unclipped, ~2.5% of draws are 2**63 ns or more and would wrap to INT64_MIN; ~11%
    # are above one hour (sf = (1e-6 / 3600)**0.1 = 0.111; 10000 draws: 1112 +- 31).
    assert (seconds * 1e9 >= 2.0**63).mean() > 0.015
    assert clipped == int(over.sum()) and 1000 < clipped < 1230
    assert ns.dtype == np.int64 and ns.min() >= 0 and ns.max() == MAX_DELAY_NS
    assert np.array_equal(ns[over], np.full(clipped, MAX_DELAY_NS))
    assert np.array_equal(ns[~over], np.rint(seconds[~over] * 1e9).astype(np.int64))


@pytest.fixture(scope="module")
def one_rank_bench(tmp_path_factory):
    """A real one-rank bench (local launcher) of an unclipped heavy tail, with the
    ``none`` injector so a clipped draw does not wait its hour."""
    from experiments.bench import run_bench, write_outputs
    from launch.plan import Plan

    out = tmp_path_factory.mktemp("bench1")
    plan = Plan.build(workload="microbench", out_dir=str(out / "run"), backend="gloo", seed=3,
                jitter="pareto(alpha=0.1, scale=1us)", injector="none", sizes=(4096,),
                iters=200, warmup=2, timeout_s=120)
    result = run_bench(plan, launcher="local", nproc=1)
    write_outputs(result, str(out / "b.json"), str(out / "b.csv"))
    return plan, result, out


def test_a_rank_file_counts_its_clipped_delays_in_its_metadata(one_rank_bench):
    from collectives.timing import read_rank_file
    from jitter_models import parse_schedule

    plan, _, _ = one_rank_bench
    cols, meta = read_rank_file(plan.rank_file(0))
    expected = int((parse_schedule(plan.jitter).delays(3, 0, 0, 1, 200, 1) > 3600).sum())
    assert expected > 0
    assert meta["delays_clipped"] == expected
    assert cols["delay_req_ns"].min() >= 0 and cols["delay_req_ns"].max() == MAX_DELAY_NS
    assert int((cols["delay_req_ns"] == MAX_DELAY_NS).sum()) == expected


def test_the_report_shows_clipped_delays_per_point():
    from experiments.report import _markdown
    from experiments.spec import parse_spec

    spec = parse_spec({"name": "r", "model": "tiny", "world_sizes": [1],
                       "jitter": [{"name": "heavy", "dist": "pareto(alpha=0.1, scale=1us)"}]})
    point = {"point": "p1", "schedule": "heavy", "world_size": 1, "batch": 1, "n_steps": 5,
             "p50_us": 1.0, "p99_us": 2.0, "p99_ci_us": [1.0, 3.0], "mean_us": 1.0,
             "mean_s": 1e-6, "p99_s": 2e-6, "site_max_requested_us": 1.0,
             "site_max_predicted_us": None, "delays_clipped": 17}
    data = {"spec": spec, "points": [point], "scaling": [], "useful": {}, "headlines": {},
            "failed": [], "skipped": [], "models": {}, "expected_points": 1, "largest": {}}
    md = _markdown(data, {})
    head = next(ln for ln in md.splitlines() if ln.startswith("| schedule | batch | "
                                                              "world_size | n_steps"))
    cells = [c.strip() for c in head.strip("|").split("|")]
    row = next(ln for ln in md.splitlines() if ln.startswith("| heavy |"))
    assert [c.strip() for c in row.strip("|").split("|")][cells.index("delays_clipped")] == "17"
    assert "**17 injected delays were clipped** to 3600s" in md


# --- bench at one rank -------------------------------------------------------------------


def test_bench_at_one_rank_reports_no_bandwidth(one_rank_bench):
    from experiments.bench import render_result

    _, result, out = one_rank_bench
    (row,) = result["rows"]
    assert row["algbw_gbps"] is None and row["busbw_gbps"] is None
    table = render_result(result).splitlines()
    header, line = table[2].split(), table[3].split()
    assert line[header.index("algbw_GB/s")] == "n/a" == line[header.index("busbw_GB/s")]
    doc = json.loads((out / "b.json").read_text())
    assert doc["rows"][0]["algbw_gbps"] is None and doc["rows"][0]["busbw_gbps"] is None


# --- bad input: exit codes and names ------------------------------------------------------


def test_a_deeply_nested_toml_is_bad_input_not_a_run_failure(tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    for args in (["validate", str(deep)], ["maxtable", "--spec", str(deep)]):
        res = cli(*args)
        assert res.returncode == 2, res.stderr
        assert res.stderr == (f"jitterlab: error: spec {str(deep)!r}: not valid TOML: arrays "
                              "or tables nested too deeply\n")
    text = "clip(" * 500 + "constant(1us)" + ", 1ms)" * 500
    res = cli("maxtable", "--jitter", text, "--n", "1")
    assert res.returncode == 2 and "calls nested more than 64 deep" in res.stderr
    assert _left(tmp_path) == ["deep.toml"]


def test_validate_into_a_closed_pipe_exits_quietly(tmp_path):
    many = [{"name": f"s{i}", "dist": f"exponential({i + 1}us)"} for i in range(100)]
    spec = write_spec(tmp_path / "many.toml", world_sizes=[1, 2, 4, 8], jitter=many)
    r, w = os.pipe()
    os.close(r)  # the reader (`head`) has gone before the first line is written
    try:
        res = subprocess.run([JITTERLAB, "validate", str(spec), "--max-ranks-per-host", "8"],
                             stdout=w,
                             stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(w)
    assert res.stderr == ""
    assert res.returncode == 141  # 128 + SIGPIPE, as a tool killed by SIGPIPE reports


@pytest.mark.parametrize("over,message", [
    ({"name": "a\x00b"}, "name: must be printable text (no control characters), got "
                         "'a\\x00b' (U+0000 at index 1)"),
    ({"jitter": [{"name": "\x1b[31mred", "dist": "constant(0s)"}]},
     "jitter[0].name: must be printable text (no control characters), got '\\x1b[31mred' "
     "(U+001B at index 0)"),
    ({"model": {"name": "m\x07", "hidden": 64, "layers": 1, "heads": 2, "kv_heads": 2,
                "ffn": 64, "vocab": 8, "head_dim": 32}},
     "model: name: must be printable text (no control characters), got 'm\\x07'"),
])
def test_control_characters_in_names_are_rejected(over, message):
    from experiments.spec import parse_spec

    doc = {"name": "t", "model": "tiny", "world_sizes": [1],
           "jitter": [{"name": "n", "dist": "constant(0s)"}], **over}
    with pytest.raises(ValueError) as info:
        parse_spec(doc)
    assert str(info.value).startswith(message), str(info.value)


def test_one_line_schedules_reject_control_characters_in_names_and_paths():
    from jitter_models import parse, parse_schedule

    with pytest.raises(ValueError, match=r"jitter: name: must be printable text .*U\+001B"):
        parse_schedule("constant(1us); name=\x1b[2Jcleared")
    with pytest.raises(ValueError, match=r"empirical: file: must be printable text"):
        parse("empirical('a\u202eb.txt')")


def test_names_are_printed_escaped(tmp_path, monkeypatch, cli):
    from experiments.report import _fmt

    assert _fmt("a\x1b[2Jb") == "a\\x1b[2Jb"
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path / "a\x1b[31mb.toml")
    res = cli("validate", str(spec))
    assert res.returncode == 0, res.stderr
    assert "\x1b" not in res.stdout and "a\\x1b[31mb.toml: ok" in res.stdout


def test_csv_text_cells_that_a_spreadsheet_would_evaluate_are_quoted():
    import csv
    import io

    from experiments.report import _csv

    rows = [{"schedule": "=HYPERLINK(\"http://x\")", "n": -1.5, "note": "+1", "at": "@SUM(A1)",
             "minus": "-2+3", "plain": "lognormal"}]
    got = list(csv.reader(io.StringIO(_csv(rows))))
    assert got[1] == ["'=HYPERLINK(\"http://x\")", "-1.5", "'+1", "'@SUM(A1)", "'-2+3",
                      "lognormal"]


def test_bench_csv_cells_are_quoted_too(tmp_path):
    import csv

    from experiments.bench import write_outputs

    row = {"coll": "=cmd|' /C calc'!A0", "size_bytes": 8, "min_us": -0.5}
    write_outputs({"rows": [row]}, None, str(tmp_path / "b.csv"))
    got = list(csv.DictReader((tmp_path / "b.csv").open()))
    assert got[0]["coll"] == "'=cmd|' /C calc'!A0" and got[0]["min_us"] == "-0.5"


# --- writes that fail midway --------------------------------------------------------------

# RLIMIT_FSIZE makes a write past the limit fail with EFBIG (a real failure of the write
# system call midway through the file, as a full disk fails with ENOSPC).
_FSIZE = """
    import json, os, resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    root = sys.argv[1]
    def fail_midway(write):
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
        try:
            write()
        except OSError as exc:
            print(json.dumps({"errno": exc.errno, "filename": exc.filename}))
        else:
            print(json.dumps(None))
"""


def _left(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_a_report_plot_that_fails_midway_leaves_no_tmp_and_names_the_file(tmp_path):
    code = _FSIZE + """
    from experiments import report
    report.build = lambda root, **kw: {}
    report._plots = lambda data: {"latency_vs_n.png": b"\\x89PNG" + bytes(100_000)}
    fail_midway(lambda: report.write_report(root))
    """
    res = python(code, str(tmp_path))
    assert json.loads(res.stdout) == {"errno": EFBIG,
                                      "filename": str(tmp_path / "latency_vs_n.png")}, res.stderr
    assert _left(tmp_path) == []


def test_write_text_atomic_that_fails_midway_names_the_destination(tmp_path):
    code = _FSIZE + """
    from experiments.atomic import write_text_atomic
    fail_midway(lambda: write_text_atomic(os.path.join(root, "report.md"), "x" * 100_000))
    """
    res = python(code, str(tmp_path))
    assert json.loads(res.stdout) == {"errno": EFBIG,
                                      "filename": str(tmp_path / "report.md")}, res.stderr
    assert _left(tmp_path) == []


def test_a_rank_file_that_fails_midway_leaves_no_tmp_and_names_the_file(tmp_path):
    code = _FSIZE + """
    import numpy as np
    from collectives.timing import write_rank_file
    cols = {"t_start_ns": np.arange(100_000, dtype=np.int64)}
    fail_midway(lambda: write_rank_file(os.path.join(root, "rank-00000.parquet"), cols, {}))
    """
    res = python(code, str(tmp_path))
    assert json.loads(res.stdout)["filename"] == str(tmp_path / "rank-00000.parquet"), \
        res.stderr
    assert _left(tmp_path) == []


def test_the_cli_names_the_file_a_failed_write_was_for(tmp_path):
    code = _FSIZE + """
    from experiments.cli import main
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))
    sys.exit(main(["maxtable", "--json", os.path.join(root, "rows.json")]))
    """
    res = python(code, str(tmp_path))
    assert res.returncode == 2
    assert res.stderr == (f"jitterlab: error: cannot write {str(tmp_path / 'rows.json')!r}: "
                          "File too large\n")
    assert _left(tmp_path) == []
