"""launch/netns.py: a command run in a private network namespace that holds only loopback,
or, where the kernel refuses one, run as it is after a line that says so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch import netns

NETNS = str(Path(netns.__file__))
# Print, from inside, the interfaces, whether a connection over 127.0.0.1 goes through (lo
# is up) and the namespace.
PROBE = ("import os, pathlib, socket; "
         "print(sorted(l.split(':')[0].strip() for l in "
         "pathlib.Path('/proc/self/net/dev').read_text().splitlines()[2:])); "
         "s = socket.create_server(('127.0.0.1', 0)); "
         "socket.create_connection(s.getsockname(), timeout=5).close(); print(1); "
         "print(os.readlink('/proc/self/ns/net'))")


def test_the_command_sees_only_loopback_and_it_is_up():
    reason = netns.unavailable()
    if reason is not None:
        pytest.skip(f"no private network namespace here: {reason}")
    out = subprocess.run([sys.executable, "-I", NETNS, sys.executable, "-c", PROBE],
                         capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    ifaces, up, namespace = out.stdout.split("\n")[:3]
    assert ifaces == "['lo']" and up == "1"
    assert namespace != os.readlink("/proc/self/ns/net")
    assert out.stderr == ""


def test_where_no_namespace_can_be_made_the_launcher_is_refused(monkeypatch, capsys):
    monkeypatch.setattr(netns, "unavailable", lambda: "Operation not permitted")
    monkeypatch.setattr(netns, "enter", lambda: pytest.fail("must not enter"))
    monkeypatch.setattr(netns.os, "execvp", lambda prog, argv: pytest.fail("ran exposed"))
    monkeypatch.delenv(netns.ALLOW_ENV, raising=False)
    with pytest.raises(SystemExit) as exc:
        netns.main(["/venv/bin/mpirun", "-np", "2"])
    assert exc.value.code == netns.EXIT_NO_NAMESPACE
    assert capsys.readouterr().err == (
        "jitterlab: no private network namespace here (Operation not permitted): refusing "
        "to run mpirun, which listens on every interface; use --launcher torchrun, or set "
        "JITTERLAB_ALLOW_EXPOSED_LAUNCHER=1\n")


def test_an_explicit_opt_in_runs_the_launcher_exposed(monkeypatch, capsys):
    monkeypatch.setenv(netns.ALLOW_ENV, "1")
    monkeypatch.setattr(netns, "unavailable", lambda: "Operation not permitted")
    monkeypatch.setattr(netns, "enter", lambda: pytest.fail("must not enter"))
    ran = []
    monkeypatch.setattr(netns.os, "execvp", lambda prog, argv: ran.append((prog, argv)))
    netns.main(["/venv/bin/mpirun", "-np", "2"])
    assert ran == [("/venv/bin/mpirun", ["/venv/bin/mpirun", "-np", "2"])]
    assert capsys.readouterr().err == (
        "jitterlab: no private network namespace here (Operation not permitted): mpirun "
        "listens on every interface (JITTERLAB_ALLOW_EXPOSED_LAUNCHER=1)\n")


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        netns.main([])
    assert exc.value.code == 2 and "usage: netns.py PROGRAM" in capsys.readouterr().err
