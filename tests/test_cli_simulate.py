"""``jitterlab simulate``: its files, its keys, and bad input (one line, exit 2, nothing
written)."""

from __future__ import annotations

import json
import math

import pytest

SPEC = """
name = "sim"
workload = "bsp"
sites_per_step = 2
compute_per_site = "100us"
message_bytes = 0
world_sizes = [4, 1024, 1048576]
steps = 200
seed = 1
{network}
[[jitter]]
name = "none"
dist = "constant(0s)"
[[jitter]]
name = "exp"
dist = "exponential(10us)"
[[jitter]]
name = "noise"
detours = "periodic(period=1ms, duration=25us, phase=aligned)"
"""
NETWORK = '[network]\nalpha = "0s"\nbandwidth_gbps = 1000\n'


def test_simulate_writes_its_json_report_and_plots(cli, tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC.format(network=NETWORK))
    out = tmp_path / "out"
    r = cli("simulate", str(spec), "--out", str(out), "--json", str(tmp_path / "x.json"))
    assert r.returncode == 0, r.stderr
    data = json.loads((out / "simulation.json").read_text())
    assert data == json.loads((tmp_path / "x.json").read_text())
    keys = {"schedule", "world_size", "mean_us", "p50_us", "p99_us", "p999_us",
            "mean_se_us", "efficiency"}
    assert all(keys <= set(row) for row in data["rows"])
    by = {(r["schedule"], r["world_size"]): r for r in data["rows"]}
    assert {n for s, n in by if s == "exp"} == {1, 4, 1024, 1048576}  # N = 1 added
    assert by["none", 1048576]["mean_us"] == pytest.approx(200.0)  # a free all-reduce
    # E[max of N exponentials] = H_N x 10 µs per site, two sites (4 SE: false failure 6e-5)
    h = math.fsum(1 / k for k in range(1, 1024 + 1))
    row = by["exp", 1024]
    assert abs(row["mean_us"] - 2 * (100 + 10 * h)) < 4 * row["mean_se_us"]
    assert by["exp", 1]["efficiency"] == pytest.approx(1.0)
    for name in ("report.md", "report.html", "simulation.csv", "sim_latency_vs_n.png",
                 "sim_efficiency_vs_n.png"):
        assert (out / name).stat().st_size > 0
    assert "useful parallelism" in r.stdout


@pytest.mark.parametrize("network, message", [
    ("", "network: the simulator needs a [network] table"),
    ('[network]\nalpha = "1us"\n', "network.bandwidth_gbps: missing"),
    ('[network]\nalpha = "-1us"\nbandwidth_gbps = 1\n', "network.alpha:"),
    ('[network]\nalpha = "1us"\nbandwidth_gbps = 0\n', "network.bandwidth_gbps: must be"),
    ('[network]\nalpha = "1us"\nbandwidth_gbps = 1\nlatency = 3\n',
     "network.latency: unknown key"),
    ('[network]\nalpha = "1us"\nbandwidth_gbps = 1\n[network.intra]\nalpha = "1us"\n',
     "network.intra.bandwidth_gbps: missing"),
])
def test_bad_network_tables_are_one_line_errors(cli, tmp_path, network, message):
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC.format(network=network))
    r = cli("simulate", str(spec), "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    assert message in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "out").exists()


def test_ring_world_sizes_are_limited(cli, tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC.format(network=NETWORK).replace('seed = 1',
                                                         'seed = 1\nalgorithm = "ring"'))
    r = cli("simulate", str(spec), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "world_sizes: the simulator takes 1 .. 65536" in r.stderr
