"""``jitterlab whatif`` (experiments/whatif.py, cli_whatif.py): from a real ``noise``
measurement and from a ``fit``, the four scenarios, the derived traces and laws, the
summary's costs, the sizes a workload does not allow, and bad input.

No statistical bound: the checks are exact properties of the scenarios (a trace's tail
halved keeps its count and shortens only its long detours; detours only add time)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from jitter_models.detour_trace import read_trace
from jitter_models.distributions import parse
from jitter_models.fitters import FITTERS

US = 1e-6


@pytest.fixture(scope="module")
def noise_dir(tmp_path_factory):
    from experiments.cli import main

    out = tmp_path_factory.mktemp("noise") / "n"
    core = sorted(os.sched_getaffinity(0))[0]
    assert main(["noise", "--cores", str(core), "--seconds", "0.5", "--out", str(out)]) == 0
    return out


def test_whatif_from_a_noise_measurement_replays_its_trace_and_two_changed_ones(
        tmp_path, cli, noise_dir):
    out = tmp_path / "w"
    res = cli("whatif", str(noise_dir), "--n", "8,64", "--steps", "20", "--out", str(out))
    assert res.returncode == 0, res.stderr
    doc = json.loads((out / "whatif.json").read_text())
    names = [s["name"] for s in doc["scenarios"]]
    assert names == ["none", "measured", "tail halved", "spikes removed"]
    measured = read_trace(doc["scenarios"][1]["detours"].split("'")[1])
    halved = read_trace(str(out / "inputs" / "detours-tail-halved.tsv"))
    cut = read_trace(str(out / "inputs" / "detours-spikes-removed.tsv"))
    assert halved[0].size == measured[0].size and (halved[1] <= measured[1]).all()
    p99 = np.sort(measured[1])[int(np.ceil(0.99 * measured[1].size)) - 1]  # nearest rank
    assert np.array_equal(cut[1], np.minimum(measured[1], p99))  # clipped at the p99
    long = measured[1] > p99
    assert np.array_equal(halved[1][long], np.round(p99 + (measured[1][long] - p99) / 2))
    rows = doc["rows"]
    assert {(r["scenario"], r["world_size"]) for r in rows} == {
        (s, n) for s in names for n in (1, 8, 64)}
    for r in rows:
        if r["scenario"] == "none":
            assert r["mean_cost"] == 0 and r["p99_cost"] == 0
    base = {r["world_size"]: r["mean_us"] for r in rows if r["scenario"] == "none"}
    for r in rows:  # detours pause compute: they only add time
        assert r["mean_us"] >= base[r["world_size"]] * (1 - 1e-9), r
    assert (out / "simulation" / "report.html").is_file()
    assert "tail halved | 64 |" in res.stdout


def test_whatif_from_a_fit_drops_a_mixtures_spikes_and_leaves_out_n_a_workload_refuses(
        tmp_path, cli):
    truth = {"weight": 0.02, "median": 50 * US, "sigma": 0.1, "spike_median": 1000 * US,
             "spike_sigma": 0.2}
    x = FITTERS["mixture"].sample(np.random.default_rng(1), truth, 4000)
    src = tmp_path / "s.txt"
    src.write_text("latency_us\n" + "\n".join(f"{v / US:.4f}" for v in x) + "\n")
    assert cli("fit", str(src), "--out", str(tmp_path / "f"), "--bootstrap", "0", "--jobs",
               "1").returncode == 0
    out = tmp_path / "w"
    res = cli("whatif", str(tmp_path / "f"), "--workload", "tp_decode", "--n", "8,16,128",
              "--steps", "20", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "left out: world_sizes: world size 128 does not divide heads=64" in res.stderr
    doc = json.loads((out / "whatif.json").read_text())
    by = {s["name"]: s for s in doc["scenarios"]}
    assert parse(by["measured"]["dist"]).family == "mixture"
    base = parse(by["spikes removed"]["dist"])
    assert base.family == "lognormal" and abs(base.median_s / (50 * US) - 1) < 0.05
    tail = parse(by["tail halved"]["dist"])
    law = parse(by["measured"]["dist"])
    assert float(tail.ppf(0.999)) < float(law.ppf(0.999))  # the tail is shorter
    assert float(tail.ppf(0.5)) == pytest.approx(float(law.ppf(0.5)), rel=0.01)
    rows = doc["rows"]
    assert sorted({r["world_size"] for r in rows}) == [1, 8, 16]
    m = {(r["scenario"], r["world_size"]): r for r in rows}
    # the spikes (2% of delays at 1 ms) dominate the max over 16 ranks: removing them wins
    assert m["spikes removed", 16]["mean_us"] < m["measured", 16]["mean_us"]


@pytest.mark.parametrize("content, message", [
    ('{"rows": []}', "is neither a jitterlab fit.json"),
    ("{not json", "is not JSON that jitterlab wrote"),
])
def test_a_json_source_that_is_no_fit_is_bad_input(tmp_path, cli, content, message):
    src = tmp_path / "x.json"
    src.write_text(content)
    res = cli("whatif", str(src), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert not (tmp_path / "o").exists()


def test_a_noise_folder_of_a_quiet_core_still_replays(tmp_path):
    """No interruption over the threshold: the trace holds one empty detour, so
    ``detours = "trace(...)"`` reads it (a trace of no line is refused)."""
    from experiments import noise
    from jitter_models.schedule_parse import parse_schedule

    quiet = noise.CoreNoise(0, np.zeros(0, np.int64), np.zeros(0, np.int64), 100.0,
                            1_000_000)
    f = tmp_path / "t.tsv"
    f.write_text(noise.trace_text(quiet))
    sched = parse_schedule({"name": "q", "dist": "constant(0s)",
                            "detours": f"trace('{f}', period=1ms)"})
    assert sched.detours.busy_fraction == 0


def test_bad_input_after_the_inputs_are_written_removes_them_but_not_the_users_folder(
        tmp_path, cli, noise_dir):
    """A noise folder whose trace does not read back: the derived inputs were written
    first, then the spec refused; the empty --out folder the user made stays."""
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(noise_dir, bad)
    for f in bad.glob("detours-core*.tsv"):
        f.write_text("not a detour\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    res = cli("whatif", str(bad), "--out", str(mine), "--n", "8")
    assert res.returncode == 2 and "detours" in res.stderr, res.stderr
    assert mine.is_dir() and not any(mine.iterdir())
    res = cli("whatif", str(bad), "--out", str(tmp_path / "new" / "deep"), "--n", "8")
    assert res.returncode == 2 and not (tmp_path / "new").exists()


@pytest.mark.parametrize("args, message", [
    (["/nonexistent"], "source: '/nonexistent' does not exist"),
    (["SRC", "--n", "x"], "--n: expected comma-separated integers"),
    (["SRC", "--core", "0"], "--core: only for a jitterlab noise folder"),
    (["SRC", "--workload", "tp_decode", "--n", "128"], "--n: tp_decode allows none of 128"),
    (["SRC", "--bandwidth-gbps", "0"], "--bandwidth-gbps: must be > 0"),
])
def test_bad_whatif_input_is_one_line_exit_2_and_nothing_is_written(tmp_path, cli, args,
                                                                    message):
    src = tmp_path / "s.txt"
    src.write_text("latency_us\n" + "\n".join(str(10 + i % 7) for i in range(500)) + "\n")
    args = [str(src) if a == "SRC" else a for a in args]
    res = cli("whatif", *args, "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
