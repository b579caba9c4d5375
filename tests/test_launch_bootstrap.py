"""Backend bootstrap: which store a torch group forms over, and where its server listens.

On one node every socket stays on loopback (issue 8): torch's TCPStore server binds every
interface whatever host it is given, so rank 0 hands it a socket bound to 127.0.0.1.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from launch import bootstrap as boot
from launch.context import RunContext


def ctx(rank: int = 0, world_size: int = 2, ranks_per_node: int | None = None,
        launcher: str = "torchrun") -> RunContext:
    per_node = world_size if ranks_per_node is None else ranks_per_node
    return RunContext(rank=rank, world_size=world_size, local_rank=rank % per_node,
                      node=rank // per_node, ranks_per_node=per_node, hostname="h",
                      launcher=launcher)


def listening(port: int) -> set[str]:
    """The addresses this process's network namespace listens on at TCP ``port``."""
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            host, hex_port = fields[1].split(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:
                raw = bytes.fromhex(host)
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
                found.add(socket.inet_ntop(family, words))
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net")
def test_the_loopback_store_listens_on_loopback_only():
    from datetime import timedelta

    pytest.importorskip("torch.distributed")
    listener = boot.loopback_listener()
    port = listener.getsockname()[1]
    store = boot._loopback_store(ctx(world_size=1), port, timedelta(seconds=10), listener)
    store.set("k", "v")
    assert store.get("k") == b"v"
    assert listening(port) == {"127.0.0.1"}


class Recorded(Exception):
    """Raised by the stubbed init_process_group to hand back what it was given."""


@pytest.fixture
def stubbed(monkeypatch):
    """bootstrap() up to init_process_group, which records its arguments; stores are
    stubbed too (none is served)."""
    dist = pytest.importorskip("torch.distributed")
    for name in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE",
                 "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        monkeypatch.setenv(name, "")  # so that what bootstrap sets is undone afterwards
        monkeypatch.delenv(name)

    def init(name, **kwargs):
        raise Recorded(name, kwargs)

    monkeypatch.setattr(dist, "init_process_group", init)
    monkeypatch.setattr(boot, "_loopback_store",
                        lambda c, port, timeout, listener=None: ("loopback", port))
    return monkeypatch


def chosen(context: RunContext) -> dict:
    with pytest.raises(Recorded) as got:
        boot.bootstrap("gloo", context, timeout_s=5)
    return got.value.args[1]


def test_one_node_torchrun_without_agent_store_gets_rank_zeros_loopback_store(stubbed):
    stubbed.setenv("MASTER_ADDR", "127.0.0.1")
    stubbed.setenv("MASTER_PORT", "29511")
    stubbed.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")
    kwargs = chosen(ctx())
    assert kwargs["store"] == ("loopback", 29511) and "init_method" not in kwargs
    assert boot.os.environ.get("GLOO_SOCKET_IFNAME") == (
        "lo" if Path("/sys/class/net/lo").exists() else None)


@pytest.mark.parametrize("agent_store, ranks_per_node", [
    ("True", None),  # torchrun's agent hosts the store: the workers are its clients
    ("False", 1),    # two nodes: rank 0 must listen where the other node reaches it
])
def test_env_rendezvous_where_the_store_is_not_ours_to_bind(stubbed, agent_store,
                                                            ranks_per_node):
    stubbed.setenv("MASTER_ADDR", "10.0.0.1")
    stubbed.setenv("MASTER_PORT", "29511")
    stubbed.setenv("TORCHELASTIC_USE_AGENT_STORE", agent_store)
    kwargs = chosen(ctx(ranks_per_node=ranks_per_node))
    assert kwargs["init_method"] == "env://" and "store" not in kwargs


def test_a_single_process_uses_an_in_memory_store(stubbed):
    import torch.distributed as dist

    kwargs = chosen(ctx(world_size=1, launcher="single"))
    assert isinstance(kwargs["store"], dist.HashStore)


def test_a_bad_master_port_is_named(stubbed):
    stubbed.setenv("MASTER_ADDR", "127.0.0.1")
    stubbed.setenv("MASTER_PORT", "http")
    with pytest.raises(ValueError, match=r"MASTER_PORT='http' is not a port in \[1, 65535\]"):
        boot.bootstrap("gloo", ctx(), timeout_s=5)
