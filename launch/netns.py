"""Run a command in a private network namespace that holds only a loopback device (Linux).

Open MPI 5's mpirun (prterun) binds its out-of-band listeners to every interface
(INADDR_ANY and in6addr_any): ``oob_tcp_if_include`` only filters the addresses it
advertises, and it refuses to run when told to use loopback alone. It offers no way to bind,
so on one node jitterlab starts it in a namespace of its own: there its ports exist on a
loopback device and nowhere else, and nothing outside the namespace can reach them.

Run as ``python -I netns.py PROGRAM ARG...``: it enters the namespace, brings ``lo`` up and
execs PROGRAM (same process, so a launcher's pid, process group and parent-death signal are
kept). It imports the standard library only, so ``-I`` keeps the caller's working directory
and environment out of its imports. With CAP_SYS_ADMIN (root) it enters a network
namespace; without, a user namespace too, mapping its own uid and gid (so a user stays who
they are, and files keep their owner). Where the kernel allows neither (a container
without CAP_SYS_ADMIN, unprivileged user namespaces turned off), PROGRAM runs as it is,
after one line on stderr that says so.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
import sys

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_IFREQ = "16sh22x"  # struct ifreq: the name, then ifr_flags in the union (40 bytes)


def _unshare(flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare: {os.strerror(err)}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        got = fcntl.ioctl(s, _SIOCGIFFLAGS, struct.pack(_IFREQ, b"lo", 0))
        flags = struct.unpack(_IFREQ, got)[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | _IFF_UP))


def enter() -> None:
    """Move this process into a new network namespace with ``lo`` up; raise OSError when
    the kernel does not allow it."""
    if not sys.platform.startswith("linux"):
        raise OSError(errno.ENOSYS, "network namespaces are Linux only")
    try:
        _unshare(CLONE_NEWNET)
    except OSError as exc:
        if exc.errno != errno.EPERM:
            raise
        uid, gid = os.getuid(), os.getgid()
        _unshare(CLONE_NEWUSER | CLONE_NEWNET)
        _write("/proc/self/setgroups", "deny")  # required before an unprivileged gid_map
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
    _loopback_up()


def unavailable() -> str | None:
    """Why ``enter`` would fail here, or None. Tried in a child process: a namespace
    entered halfway (created, but ``lo`` left down) cannot be left again."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        try:
            enter()
            reason = b""
        except OSError as exc:
            reason = (exc.strerror or str(exc)).encode()
        os.write(write, reason)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        reason = f.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if not reason and os.WIFSIGNALED(status):  # e.g. seccomp killing unshare (SIGSYS)
        return f"the probe was killed by signal {os.WTERMSIG(status)}"
    return reason or None


ALLOW_ENV = "JITTERLAB_ALLOW_EXPOSED_LAUNCHER"
EXIT_NO_NAMESPACE = 3


def main(argv: list[str]) -> None:
    if not argv:
        sys.stderr.write("usage: netns.py PROGRAM [ARG...]\n")
        sys.exit(2)
    reason = unavailable()
    name = os.path.basename(argv[0])
    if reason is None:
        try:
            enter()
        except OSError as exc:
            reason = exc.strerror or str(exc)
    if reason is not None:
        if os.environ.get(ALLOW_ENV) != "1":  # a launcher that cannot bind: not run exposed
            sys.stderr.write(f"jitterlab: no private network namespace here ({reason}): "
                             f"refusing to run {name}, which listens on every interface; "
                             f"use --launcher torchrun, or set {ALLOW_ENV}=1\n")
            sys.exit(EXIT_NO_NAMESPACE)
        sys.stderr.write(f"jitterlab: no private network namespace here ({reason}): {name} "
                         f"listens on every interface ({ALLOW_ENV}=1)\n")
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
