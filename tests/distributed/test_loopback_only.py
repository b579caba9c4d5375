"""On one node nothing a run starts listens beyond loopback (issue 8, "Nobody gets in").

A real point runs through each launcher; while its ranks are inside their collectives, the
test reads the listening sockets of every process of the run (the bench command, the
launcher, the ranks: the process tree, plus the ranks the progress board names) from
/proc/<pid>/fd socket inodes and that process's own /proc/<pid>/net/{tcp,tcp6,udp,udp6}.
Each must be bound to 127.0.0.0/8 or ::1, or sit in a network namespace other than the
test's whose only interface is lo (where Open MPI's mpirun runs: it binds every interface
and offers no way not to). The test also requires that it found the run's processes and
at least one socket, so it cannot pass by looking at nothing.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from launch.progress import read_board

JITTERLAB = str(Path(sys.executable).with_name("jitterlab"))
_TCP_LISTEN = "0A"
_NO_NAMESPACE = "no private network namespace here"


@dataclass(frozen=True)
class Listener:
    pid: int
    program: str
    proto: str
    addr: str
    port: int
    own_namespace: bool
    """The socket's network namespace is the test's own."""
    namespace_ifaces: tuple[str, ...]
    """The interfaces of the socket's network namespace."""

    def reachable_beyond_loopback(self) -> bool:
        ip = ipaddress.ip_address(self.addr)
        if getattr(ip, "ipv4_mapped", None) is not None:
            ip = ip.ipv4_mapped
        if ip.is_loopback:
            return False
        return self.own_namespace or self.namespace_ifaces != ("lo",)

    def __str__(self) -> str:
        ifaces = ", ".join(self.namespace_ifaces)
        where = "" if self.own_namespace else f" (namespace with {ifaces})"
        return f"{self.program}[{self.pid}] {self.proto} {self.addr}:{self.port}{where}"


def _address(hex_addr: str) -> tuple[str, int]:
    """/proc/net/tcp's "0100007F:1F90" (each 32-bit word in host byte order)."""
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, words), int(port, 16)


def _bound_sockets(pid: int) -> dict[int, tuple[str, str, int]]:
    """inode -> (proto, address, port) of the listening TCP and bound, unconnected UDP
    sockets in ``pid``'s network namespace."""
    found = {}
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            if proto.startswith("tcp") and state != _TCP_LISTEN:
                continue
            if proto.startswith("udp") and _address(remote)[1] != 0:
                continue  # connected: it receives from its peer only
            found[inode] = (proto, *_address(local))
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _interfaces(pid: int) -> tuple[str, ...]:
    try:
        lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    except OSError:
        return ()
    return tuple(sorted(line.split(":")[0].strip() for line in lines))


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            parents[int(name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree |= more
        grew = bool(more)
    return tree


def _listeners(pids: set[int]) -> list[Listener]:
    ours = os.readlink("/proc/self/ns/net")
    out = []
    for pid in sorted(pids):
        try:
            program = Path(f"/proc/{pid}/comm").read_text().strip()
            namespace = os.readlink(f"/proc/{pid}/ns/net")
        except OSError:
            continue  # gone meanwhile
        table = _bound_sockets(pid)
        for inode in _socket_inodes(pid) & set(table):
            proto, addr, port = table[inode]
            out.append(Listener(pid, program, proto, addr, port, namespace == ours,
                                _interfaces(pid)))
    return out


def _run_and_look(out: Path, launcher: str, backend: str, nproc: int):
    """Start a long point, wait until every rank is past its first collectives, then read
    the run's listening sockets a few times; stop the run. Returns (processes, listeners,
    launcher log)."""
    proc = subprocess.Popen(
        [JITTERLAB, "bench", "--launcher", launcher, "--nproc", str(nproc), "--backend",
         backend, "-b", "64", "-e", "64", "-n", "10000000", "-w", "0", "--timeout", "60",
         "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen_pids: set[int] = set()
    listeners: dict[tuple, Listener] = {}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            board = read_board(out)
            if board.size and (board[:, 0] > 20).all() and (board[:, 2] > 0).all():
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert board.size and (board[:, 0] > 20).all(), "the ranks never got going"
        for _ in range(5):  # several looks: a socket may come and go
            pids = _descendants(proc.pid) | {int(p) for p in board[:, 2] if p > 0}
            seen_pids |= pids
            for item in _listeners(pids):
                listeners[(item.pid, item.proto, item.addr, item.port)] = item
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)  # the bench stops its launcher and every rank
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    log = out / "launcher.log"
    return seen_pids, list(listeners.values()), log.read_text(errors="replace")


@pytest.mark.parametrize("launcher,backend,nproc", [
    ("torchrun", "gloo", 2),  # torchrun's agent, rank 0's store, gloo's pairs
    ("mpirun", "mpi", 2),     # mpirun (prterun), PMIx, Open MPI's transports
    ("mpirun", "gloo", 2),    # the store rank 0 hosts after an MPI rendezvous
    ("local", "gloo", 1),     # one process: no store server, gloo on lo
])
def test_nothing_of_a_one_node_run_listens_beyond_loopback(tmp_path, launcher, backend,
                                                            nproc):
    pids, listeners, log = _run_and_look(tmp_path / "run", launcher, backend, nproc)
    exposed = [str(x) for x in listeners if x.reachable_beyond_loopback()]
    if exposed and launcher == "mpirun" and _NO_NAMESPACE in log:
        pytest.skip(f"this kernel gives no private network namespace: {log.strip()[:200]}")
    assert not exposed, f"listening beyond loopback: {exposed}"
    # Not vacuous: the bench, its launcher and the ranks were seen, and their sockets.
    assert len(pids) >= nproc + (1 if launcher == "local" else 2), pids
    assert listeners, f"no listening socket found among {sorted(pids)}"
