"""Bad input and bugs told apart: ``BadInput`` exits 2 with one line and is what a sweep
records as a failed point; any other ValueError is a bug, which neither exits 2 nor hides
in ``failed/``."""

from __future__ import annotations

import pytest

from experiments.cli import main
from jitter_models.errors import BadInput, reading_input


def test_reading_input_turns_a_parsers_value_error_into_bad_input_with_its_path():
    with pytest.raises(BadInput) as info:
        with reading_input():
            raise ValueError("jitter[2].dist: lognormal: sigma: must be > 0, got -1.0")
    assert info.value.path == "jitter[2].dist"
    assert isinstance(info.value.__cause__, ValueError)
    assert BadInput("no path here at all").path == ""
    with pytest.raises(KeyError):  # only ValueError is input's
        with reading_input():
            raise KeyError("x")


def test_bad_input_exits_2_with_one_line(capsys):
    assert main(["describe", "lognormal(median=1us, sigma=-1)"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jitterlab: error: ") and err.count("\n") == 1


def test_a_bugs_value_error_is_not_bad_input(monkeypatch, capsys):
    import jitter_models

    def broken(*args, **kwargs):
        raise ValueError("an internal inconsistency")

    # maxtable reads its input, then computes: a ValueError from the computation is a bug.
    monkeypatch.setattr("experiments.maxtable.max_table", broken)
    with pytest.raises(ValueError, match="an internal inconsistency"):
        main(["maxtable", "--jitter", "exponential(5us)", "--n", "4"])
    assert "internal error (a bug, not bad input" in capsys.readouterr().err
    assert jitter_models.parse("exponential(5us)")  # (the parser itself is untouched)


def test_a_bug_after_a_points_run_stops_the_sweep_and_is_not_a_failed_point(tmp_path,
                                                                            monkeypatch):
    # A real one-rank point runs; the analysis then raises a plain ValueError (a bug).
    from experiments import sweep_loop
    from experiments.spec import parse_spec

    spec = parse_spec({"name": "bug", "model": "tiny", "compute": "none", "world_sizes": [1],
                       "steps": 3, "warmup": 0, "timeout_s": 60,
                       "jitter": [{"name": "none", "dist": "constant(0s)"}]})

    def broken(samples):
        raise ValueError("an internal inconsistency")

    monkeypatch.setattr(sweep_loop, "latency_stats", broken)
    with pytest.raises(ValueError, match="an internal inconsistency"):
        sweep_loop.run_sweep(spec, {}, tmp_path / "out", progress=False)
    # (the log is kept beside where a record would be, to debug the bug; no record)
    assert not list((tmp_path / "out").glob("failed/*.json"))


@pytest.mark.parametrize("argv,message", [
    (["calibrate", "--samples", "0"], "samples: must be an integer >= 1, got 0"),
    (["maxtable", "--jitter", "exponential(1us); scope=link"], "jitter[0].scope: 'link'"),
    (["bench", "--record-hops"], "record_hops: records the messages of an explicit"),
    (["describe", "pareto(alpha=0)"], "pareto: missing parameter 'scale'"),
])
def test_inputs_found_in_review_exit_2_with_one_line(argv, message, capsys, tmp_path,
                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()  # nothing written


def test_a_plan_of_the_wrong_types_is_bad_input():
    from launch.plan import Plan

    good = Plan.build(workload="microbench", out_dir="x")
    for field, value, message in [("dtype", 5, "dtype: unknown 5"),
                                  ("out_dir", 5, "plan: out_dir: expected a string"),
                                  ("params", {"colls": "all_reduce"}, "colls: expected a list"),
                                  ("params", {"colls": ["foo"]}, "colls: unknown op 'foo'")]:
        text = good.to_json().replace(f'"{field}": ', f'"{field}_old": ', 1)
        import json

        doc = json.loads(text)
        doc.pop(f"{field}_old")
        doc[field] = value
        with pytest.raises(BadInput, match="^" + message.replace("(", r"\(")):
            Plan.from_json(json.dumps(doc))


def test_a_workload_whose_content_takes_a_reserved_key_is_refused(tmp_path, monkeypatch):
    (tmp_path / "clash_wl.py").write_text(
        "from collectives.workload import BaseWorkload\n"
        "class W(BaseWorkload):\n"
        "    name = 'clash'\n"
        "    def content(self, params, batch): return {'seed': 1}\n"
        "    def sites_per_step(self, params): return 1\n"
        "    def message_bytes(self, params, **kw): return 4\n"
        "    def run(self, rank): raise NotImplementedError\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from experiments.spec import parse_spec
    from experiments.sweep import expand

    spec = parse_spec({"workload": "clash_wl:W", "jitter": [{"dist": "constant(0s)"}]})
    with pytest.raises(BadInput, match="^workload: 'clash_wl:W' names its content 'seed'"):
        expand(spec)[0].content()
