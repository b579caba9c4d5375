"""Sweep specs: validation messages with key paths, and sweep expansion with stable ids."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from experiments.spec import parse_spec
from experiments.sweep import expand

JITTERLAB = str(Path(sys.executable).with_name("jitterlab"))
PRESET = Path(__file__).resolve().parents[1] / "experiments" / "presets" / "quickstart.toml"


def doc(**over):
    base = {"name": "t", "model": "llama-3-8b", "world_sizes": [1, 2], "steps": 10,
            "jitter": [{"name": "none", "dist": "constant(0s)"},
                       {"name": "exp", "dist": "exponential(20us)"}]}
    return {**base, **over}


@pytest.mark.parametrize("over,message", [
    ({"jitter": [{"name": "a", "dist": "constant(0s)"}, {"name": "b", "dist": "constant(0s)"},
                 {"name": "c", "dist": "lognormal(median=5us, sigma=-1)"}]},
     "jitter[2].dist: lognormal: sigma: must be > 0, got -1.0"),
    ({"world_sizes": [1, 3]}, "world_sizes: world size 3 does not divide heads=32"),
    ({"steps": True}, "steps: expected an integer, got True"),
    ({"steps": 1_000_000}, "steps: must be in [1, 100000], got 1000000"),
    ({"timeout_s": 0}, "timeout_s: must be > 0 and at most 86400 seconds, got 0"),
    ({"timeout_s": float("nan")}, "timeout_s: must be > 0 and at most 86400 seconds, got nan"),
    ({"world_sizes": [2, 2]}, "world_sizes: repeated values in [2, 2]"),
    ({"world_sizes": [1, 0]}, "world_sizes[1]: must be in [1, 4096], got 0"),
    ({"compute": "fake"}, "compute: must be one of real, emulated, none, got 'fake'"),
    ({"model": "llama-9"}, "model: unknown 'llama-9'"),
    ({"model": 3}, "model: expected a preset name or a table of dims, got 3"),
    ({"model": {"layers": 2}}, "model: "),
    ({"jitter": []}, "jitter: needs at least one [[jitter]] table"),
    ({"jitter": [{"name": "a", "dist": "exponential(5us)", "temporal": "ar1(rho=2)"}]},
     "jitter[0].temporal: ar1: rho: must be in (-1, 1), got 2.0"),
    ({"jitter": [{"name": "a", "dist": "constant(0s)", "scope": "host"}]},
     "jitter[0].scope: must be one of rank, node, global, link, got 'host'"),
    ({"jitter": [{"name": "a", "dist": "constant(0s)"}, {"name": "a", "dist": "constant(0s)"}]},
     "jitter: name: 'a' is used twice"),
    ({"colour": "red"}, "colour: unknown key"),
    ({"name": "../x"}, "name: must be a plain folder name, got '../x'"),
])
def test_malformed_specs_name_the_key_path_and_value(over, message):
    with pytest.raises(ValueError) as info:
        parse_spec(doc(**over))
    assert str(info.value).startswith(message), str(info.value)


def test_validate_cli_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text('world_sizes = [1, 3]\nmodel = "llama-3-8b"\n'
                   '[[jitter]]\nname = "n"\ndist = "constant(0s)"\n')
    res = cli("validate", str(bad))
    assert res.returncode == 2
    assert res.stderr.strip() == ("jitterlab: error: world_sizes: world size 3 does not "
                                  "divide heads=32")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


def test_the_quickstart_preset_is_valid_and_lists_its_points(cli):
    res = cli("validate", str(PRESET))
    assert res.returncode == 0, res.stderr
    assert "10 points" in res.stdout


def test_validate_checks_a_multi_node_layout_without_importing_torch(cli):
    # The installed console script in a fresh interpreter: which modules it imports.
    two = PRESET.with_name("two-node-slurm.toml")
    res = subprocess.run([sys.executable, "-X", "importtime", JITTERLAB, "validate", str(two),
                          "--nnodes", "2"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "4 points, fits 2 nodes" in res.stdout
    assert res.stdout.count("on 1 node x 8") == 2 and res.stdout.count("on 2 nodes x 8") == 2
    assert "torch" not in {line.split("|")[-1].strip() for line in res.stderr.splitlines()}
    res = cli("validate", str(PRESET), "--nnodes", "2")
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith("jitterlab: error: backend: a multi-node sweep starts "
                                 "torchrun on each node")


def test_points_are_the_product_and_ids_are_stable_and_content_addressed():
    spec = parse_spec(doc(batch=[1, 4]))
    points = expand(spec)
    assert [(p.schedule.name, p.batch, p.world_size) for p in points] == [
        (s, b, n) for s in ("none", "exp") for b in (1, 4) for n in (1, 2)]
    ids = [p.id for p in points]
    assert len(set(ids)) == len(ids) and all(len(i) == 12 for i in ids)
    assert [p.id for p in expand(parse_spec(doc(batch=[1, 4])))] == ids
    # Name and timeout do not change what a point computes; the seed does.
    assert [p.id for p in expand(parse_spec(doc(batch=[1, 4], name="other",
                                                timeout_s=5)))] == ids
    assert not set(p.id for p in expand(parse_spec(doc(batch=[1, 4], seed=1)))) & set(ids)


def test_every_shipped_sweep_preset_is_valid():
    from experiments.maxtable import load_preset, preset_names

    sweeps = [n for n in preset_names() if "workload" in load_preset(n)]
    assert {"quickstart", "llama-3-70b-h100-emulated", "llama-3-70b-h100",
            "two-node-slurm"} <= set(sweeps)
    for name in sweeps:
        spec = parse_spec(load_preset(name), default_name=name)
        assert spec.name == name and expand(spec)
