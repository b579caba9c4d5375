"""The ``jitterlab`` command line: ``experiments.cli.main`` in this process (its exit
code, stdout and stderr), and the installed console script where the real process is
the point (imports, the entry point itself)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import mpmath
import pytest

JITTERLAB = str(Path(sys.executable).with_name("jitterlab"))


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The installed console script, in its own process."""
    return subprocess.run([JITTERLAB, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_help_and_torch_free_commands_do_not_import_torch():
    code = ("import sys\n"
            "from experiments.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "main(['maxtable', '--n', '1,4'])\n"
            "main(['describe', 'exponential(20us)', '--n', '2'])\n"
            "print('torch imported:', 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "torch imported: False" in out.stdout


def test_maxtable_json_rows_are_the_exact_expected_maxima(tmp_path):
    # The installed console script (not main in this process): the entry point itself.
    out_file = tmp_path / "rows.json"
    res = run("maxtable", "--jitter", "exponential(20us)", "--jitter",
              "constant(7us); name=flat", "--n", "1,8,1024", "--json", str(out_file))
    assert res.returncode == 0, res.stderr
    doc = json.loads(out_file.read_text())
    assert doc["unit"] == "us" and doc["stat"] == "mean"
    rows = {(r["schedule"], r["n"]): r for r in doc["rows"]}
    for n in (1, 8, 1024):
        exact_us = 20 * float(mpmath.harmonic(n))
        assert rows[("exponential(20us)", n)]["value_us"] == pytest.approx(exact_us, rel=1e-6)
        assert rows[("flat", n)]["value_us"] == pytest.approx(7.0, rel=1e-12)
    assert rows[("exponential(20us)", 1024)]["amplification"] == pytest.approx(
        float(mpmath.harmonic(1024)), rel=1e-6)
    # The printed table carries the same numbers, in µs, with the unit in the title.
    assert "microseconds (µs)" in res.stdout
    line_1024 = next(ln for ln in res.stdout.splitlines() if ln.split()[:1] == ["1024"])
    assert float(line_1024.split()[1]) == pytest.approx(20 * float(mpmath.harmonic(1024)),
                                                        abs=0.006)


def test_maxtable_default_preset_is_the_jitter_zoo(cli):
    res = cli("maxtable", "--n", "1,2")
    assert res.returncode == 0, res.stderr
    for name in ("exp-20us", "spike-1%-2ms", "pareto-a2.5", "exp-20us+1straggler"):
        assert name in res.stdout


def test_maxtable_p99_with_a_straggler_and_node_scope(tmp_path, cli):
    spec = tmp_path / "spec.toml"
    spec.write_text('[[jitter]]\nname = "node-exp"\ndist = "exponential(10us)"\n'
                    'scope = "node"\n')
    out_file = tmp_path / "rows.json"
    res = cli("maxtable", "--spec", str(spec), "--n", "16", "--stat", "p99",
              "--ranks-per-node", "8", "--json", str(out_file))
    assert res.returncode == 0, res.stderr
    (row,) = json.loads(out_file.read_text())["rows"]
    # 16 ranks on 2 nodes share 2 draws: p99 of max of 2 exponentials = -mean*log(1-0.99^(1/2))
    assert row["value_us"] == pytest.approx(-10 * math.log(1 - 0.99 ** 0.5), rel=1e-9)


def test_describe_prints_and_writes_quantiles(tmp_path, cli):
    out_file = tmp_path / "d.json"
    res = cli("describe", "exponential(20us)", "--n", "4", "--json", str(out_file))
    assert res.returncode == 0, res.stderr
    doc = json.loads(out_file.read_text())
    assert doc["mean_us"] == pytest.approx(20.0) and doc["std_us"] == pytest.approx(20.0)
    assert doc["p99_us"] == pytest.approx(-20 * math.log(0.01), rel=1e-12)
    assert doc["max"][0]["mean_us"] == pytest.approx(20 * (1 + 1 / 2 + 1 / 3 + 1 / 4), rel=1e-9)


@pytest.mark.parametrize("args,message", [
    (["maxtable", "--jitter", "lognormal(median=50us sigma=1)"], "column 23"),
    (["maxtable", "--jitter", "exponential(20us); scope=host"], "scope: must be one of"),
    (["maxtable", "--preset", "nope"], "unknown preset 'nope'"),
    (["maxtable", "--spec", "missing.toml"], "cannot read 'missing.toml'"),
    (["describe", "exponential(-5us)"], "durations cannot be negative"),
    (["describe", "expo(5us)"], "unknown distribution family 'expo'"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, cli, args,
                                                          message):
    monkeypatch.chdir(tmp_path)
    out_file = tmp_path / "out.json"
    res = cli(*args, "--json", str(out_file))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jitterlab: error: ") and message in lines[0]
    assert not out_file.exists() and list(tmp_path.iterdir()) == []


def test_invalid_toml_names_the_file(tmp_path, cli):
    spec = tmp_path / "bad.toml"
    spec.write_text("[[jitter]\nname = 1\n")
    res = cli("maxtable", "--spec", str(spec))
    assert res.returncode == 2 and "not valid TOML" in res.stderr and "bad.toml" in res.stderr


@pytest.mark.parametrize("args,message", [
    (["maxtable", "--n", "1,0"], "argument --n: expected integers >= 1, got '1,0'"),
    (["maxtable", "--stat", "p42"], "argument --stat: invalid choice: 'p42'"),
    (["bogus"], "invalid choice: 'bogus'"),
])
def test_usage_mistakes_are_one_line_exit_2(cli, args, message):
    res = cli(*args)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and message in lines[0]


def test_infinite_expected_max_is_inf_in_the_table_and_null_in_strict_json(tmp_path, cli):
    out_file = tmp_path / "rows.json"
    res = cli("maxtable", "--jitter", "pareto(alpha=1, scale=1us)", "--n", "1,2",
              "--json", str(out_file))
    assert res.returncode == 0, res.stderr
    cells = {ln.split()[0]: ln.split()[1:] for ln in res.stdout.splitlines()
             if ln.split()[:1] in (["1"], ["2"])}
    assert cells == {"1": ["inf"], "2": ["inf"]}
    text = out_file.read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert [r["value_us"] for r in json.loads(text)["rows"]] == [None, None]


def test_mean_row_is_the_mean_of_the_temporal_marginal(cli):
    # Bursts replace calm delays: the mean delay is 0.5*5us + 0.5*1ms, as at N = 1.
    res = cli("maxtable", "--n", "1", "--jitter",
              "constant(5us); temporal=bursty(p_enter=0.5, p_exit=0.5, burst=constant(1ms))")
    assert res.returncode == 0, res.stderr
    cells = {ln.split()[0]: ln.split()[1:] for ln in res.stdout.splitlines()
             if ln.split()[:1] in (["mean"], ["1"])}
    assert cells == {"mean": ["502.50"], "1": ["502.50"]}


def test_duplicate_names_and_an_unwritable_json_path_are_bad_input(tmp_path, cli):
    res = cli("maxtable", "--jitter", "exponential(20us); name=a", "--jitter",
              "constant(5us); name=a")
    assert res.returncode == 2 and res.stderr.strip() == \
        "jitterlab: error: jitter: name: 'a' is used twice"
    res = cli("maxtable", "--n", "1", "--json", str(tmp_path / "no" / "such" / "x.json"),
              "--preset", "jitter-zoo")
    assert res.returncode == 0  # parents are created
    blocker = tmp_path / "file"
    blocker.write_text("")
    res = cli("maxtable", "--n", "1", "--json", str(blocker / "x.json"))
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "cannot write" in lines[0]
    assert res.stdout == ""  # no table printed for a result that could not be saved
