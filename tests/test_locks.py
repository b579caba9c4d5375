"""The result folder's lock: atomic, and a stale one never leads to signalling a process
that is not provably the dead run's own (issue 8, section 1).

Every case that could signal something runs the lock in a child of its own session, so a
regression kills at most that child (a lock naming process group 0 signals the caller's
own group), never pytest."""

from __future__ import annotations

import json
import os
import platform
import select
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest


def start_ticks(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat: when the process started, in clock ticks since boot."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])

HOST = platform.node()


# Takes the lock as a sweep does, in a child of a session of its own. The child is forked
# from a server that has imported experiments.locks once (a fresh interpreter per case
# spent ~1 s importing): one JSON line in (the folder), one out (what the child printed,
# how it exited). The server runs in a session of its own too, so even a regression that
# signalled the server's group would reach neither pytest nor the test's decoys.
_FORK_SERVER = textwrap.dedent("""
    import json, os, signal, sys, traceback
    from pathlib import Path
    from experiments.locks import take_lock
    print("ready", flush=True)
    for line in sys.stdin:
        root = Path(json.loads(line))
        pipes = [os.pipe(), os.pipe()]  # the child's stdout and stderr
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for fd, (r, w) in zip((1, 2), pipes):
                    os.close(r)
                    os.dup2(w, fd)
                os.setsid()
                signal.alarm(50)  # a child that hangs ends
                os.chdir(root.parent)
                try:
                    take_lock(root)
                    print("taken")
                except ValueError as exc:
                    print("refused:", exc)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        texts = []
        for r, w in pipes:
            os.close(w)
            with os.fdopen(r, "rb") as f:
                texts.append(f.read().decode(errors="replace"))
        status = os.waitpid(pid, 0)[1]
        print(json.dumps([*texts, os.waitstatus_to_exitcode(status)]), flush=True)
""")


class _Taker:
    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def take(self, root: Path, timeout: float) -> subprocess.CompletedProcess:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _FORK_SERVER], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, text=True, start_new_session=True,
                env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
            assert self._line(60) == "ready"
        self.proc.stdin.write(json.dumps(str(root)) + "\n")
        self.proc.stdin.flush()
        out, err, code = json.loads(self._line(timeout))
        return subprocess.CompletedProcess(["take_lock", str(root)], code, out, err)

    def _line(self, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:  # the child hangs (a FIFO opened for reading, say): a failure
            self.close()
            raise subprocess.TimeoutExpired("take_lock", timeout)
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the server and a hung child
            self.proc.wait()
            self.proc = None


_TAKER = _Taker()


@pytest.fixture(scope="module", autouse=True)
def _fork_server():
    yield
    _TAKER.close()


def take_in_child(root: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """``take_lock(root)`` (as the sweep takes it) in a child in a session of its own; its
    stdout is 'taken' or 'refused: <message>'."""
    return _TAKER.take(root, timeout)


def decoy(*extra: str) -> subprocess.Popen:
    """A process that is no run's: ``setsid sleep``-like, its own group leader."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)", *extra],
                            start_new_session=True)


def wait_started(proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(Path(f"/proc/{proc.pid}/cmdline").read_bytes()
                                              .split(b"\0")) < 3:
        time.sleep(0.01)  # until the exec is done and the command line is the child's


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


def write_lock(root: Path, **doc) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / ".lock"
    path.write_text(json.dumps({"host": HOST, **doc}))
    return path


DEAD = 2**22 + 1234  # above the default pid_max: no such process


@pytest.mark.parametrize("named", ["pgid", "pid"])
def test_a_crafted_lock_naming_a_decoy_is_refused_and_the_decoy_survives(tmp_path, procs,
                                                                         named):
    victim = decoy()
    procs.append(victim)
    wait_started(victim)
    root = tmp_path / "out"
    folder = root / "points" / ".tmp-abc"
    doc = {"pid": DEAD, "pgid": victim.pid, "folder": str(folder), "board": "progress.bin"} \
        if named == "pgid" else {"pid": victim.pid}
    lock = write_lock(root, **doc)
    res = take_in_child(root)
    time.sleep(0.2)
    assert victim.poll() is None, "the decoy was signalled"
    assert res.stdout.startswith("refused:"), res.stdout + res.stderr
    assert str(lock) in res.stdout and "remove" in res.stdout
    assert json.loads(lock.read_text())["pid"] == doc["pid"]  # the lock is left for the user


def test_a_lock_naming_process_group_0_signals_nothing(tmp_path):
    """pgid 0 means 'my own group' to killpg: the old code killed the rerun itself."""
    root = tmp_path / "out"
    write_lock(root, pid=DEAD, pgid=0, folder=str(root / "points" / ".tmp-abc"))
    res = take_in_child(root)
    assert res.returncode == 0 and res.stdout.startswith("refused:"), (res.returncode,
                                                                        res.stdout)


def test_board_pids_are_stopped_only_when_provably_the_runs(tmp_path, procs):
    """A dead run's board names two pids: a real rank of the folder's plan (stopped) and an
    unrelated process (so the rerun is refused, and nothing is signalled)."""
    root = tmp_path / "out"
    folder = root / "points" / ".tmp-abc"
    folder.mkdir(parents=True)
    plan = str(folder / "plan.json")
    rank = decoy("jitterlab", "worker", plan)  # the command line a rank of this point has
    other = decoy()
    procs += [rank, other]
    wait_started(rank)
    wait_started(other)
    board = np.zeros((2, 4), dtype=np.int64)
    board[:, 2] = [rank.pid, other.pid]
    board[:, 3] = [start_ticks(rank.pid), start_ticks(other.pid)]
    (folder / "progress.bin").write_bytes(board.tobytes())
    os.chmod(folder / "progress.bin", 0o600)
    write_lock(root, pid=DEAD, pgid=DEAD, pgid_start=1, folder=str(folder),
               board="progress.bin")
    res = take_in_child(root)
    assert res.stdout.startswith("refused:") and f"pid {other.pid}" in res.stdout
    time.sleep(0.2)
    assert rank.poll() is None and other.poll() is None  # refused: nothing signalled

    board[1] = 0  # now the board names only the rank: it is stopped, the lock taken
    (folder / "progress.bin").write_bytes(board.tobytes())
    res = take_in_child(root)
    assert res.stdout.strip() == "taken", res.stdout + res.stderr
    assert rank.wait(timeout=10) == -signal.SIGKILL and other.poll() is None


def test_a_reused_pid_is_not_the_rank(tmp_path, procs):
    """The board's start time is not the live process's: PID reuse, never signalled."""
    root = tmp_path / "out"
    folder = root / "points" / ".tmp-abc"
    folder.mkdir(parents=True)
    lookalike = decoy("jitterlab", "worker", str(folder / "plan.json"))
    procs.append(lookalike)
    wait_started(lookalike)
    board = np.array([[0, 0, lookalike.pid, start_ticks(lookalike.pid) - 1]], dtype=np.int64)
    (folder / "progress.bin").write_bytes(board.tobytes())
    os.chmod(folder / "progress.bin", 0o600)
    write_lock(root, pid=DEAD, pgid=DEAD, pgid_start=1, folder=str(folder))
    res = take_in_child(root)
    time.sleep(0.2)
    assert lookalike.poll() is None and res.stdout.startswith("refused:")


def test_a_board_others_can_write_is_not_evidence(tmp_path, procs):
    """A world-writable board (umask 000 made it so before) names the run's own rank: its
    pids prove nothing, so they are not signalled, and the lock is taken."""
    root = tmp_path / "out"
    folder = root / "points" / ".tmp-abc"
    folder.mkdir(parents=True)
    rank = decoy("jitterlab", "worker", str(folder / "plan.json"))
    procs.append(rank)
    wait_started(rank)
    board = np.array([[0, 0, rank.pid, start_ticks(rank.pid)]], dtype=np.int64)
    (folder / "progress.bin").write_bytes(board.tobytes())
    os.chmod(folder / "progress.bin", 0o666)
    write_lock(root, pid=DEAD, pgid=DEAD, pgid_start=1, folder=str(folder))
    assert take_in_child(root).stdout.strip() == "taken"
    time.sleep(0.2)
    assert rank.poll() is None


def test_a_launcher_group_of_the_run_is_stopped(tmp_path, procs):
    """The lock's group leader runs the folder's plan and started when the lock says:
    the whole group is stopped, and the folder taken over."""
    root = tmp_path / "out"
    folder = root / "points" / ".tmp-abc"
    folder.mkdir(parents=True)
    launcher = decoy("jitterlab", "worker", str(folder / "plan.json"))
    procs.append(launcher)
    wait_started(launcher)
    write_lock(root, pid=DEAD, pgid=launcher.pid, pgid_start=start_ticks(launcher.pid),
               folder=str(folder))
    assert take_in_child(root).stdout.strip() == "taken"
    assert launcher.wait(timeout=10) == -signal.SIGKILL


def test_a_lock_of_a_live_sweep_is_refused_as_in_use(tmp_path, procs):
    sweep = decoy("jitterlab", "run")  # a process whose command line is a jitterlab run
    procs.append(sweep)
    wait_started(sweep)
    write_lock(tmp_path / "out", pid=sweep.pid)
    res = take_in_child(tmp_path / "out")
    assert res.stdout.startswith("refused:") and "in use by a running sweep" in res.stdout


def test_the_lock_is_atomic_between_processes_started_at_the_same_instant(tmp_path):
    """20 trials of two processes taking the same fresh folder's lock at one instant:
    exactly one wins each time, and the loser leaves the winner's lock in place. Both
    start together once both have imported (they say 'ready'; the test then sends the
    instant), trials 0.2 s apart (a take_lock takes well under a millisecond); each holds
    its locks until both are done (a loser late by load still meets the winner's lock)."""
    code = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from experiments.locks import take_lock
        base = sys.argv[1]
        print("ready", flush=True)
        at = float(sys.stdin.readline())
        held = []
        for trial in range(20):
            root = Path(base) / f"t{trial}"
            while time.time() < at + 0.2 * trial:  # both start each trial together
                pass
            try:
                    lock = take_lock(root)
            except ValueError as exc:
                print(trial, "lost", exc, flush=True)
                continue
            print(trial, "won", flush=True)
            held.append(lock)
        print("done", flush=True)
        sys.stdin.readline()  # held until both are done
        for lock in held:
            lock.release()
    """)
    ps = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=tmp_path,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
          for _ in range(2)]
    try:
        assert [p.stdout.readline() for p in ps] == ["ready\n"] * 2
        at = time.time() + 0.3  # both are waiting for it
        for p in ps:
            p.stdin.write(f"{at}\n")
            p.stdin.flush()
        lines = [[], []]
        for p, mine in zip(ps, lines):
            for line in p.stdout:
                if line == "done\n":
                    break
                mine.append(line)
        outs = [p.communicate(input="release\n", timeout=60) for p in ps]
    finally:
        for p in ps:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in ps), (lines, outs)
    lines = sorted(line.strip() for mine in lines for line in mine)
    for trial in range(20):
        mine = [ln.split(" ", 2) for ln in lines if ln.split(" ", 1)[0] == str(trial)]
        assert sorted(m[1] for m in mine) == ["lost", "won"], (trial, mine, outs)
        assert "in use by a running sweep" in [m for m in mine if m[1] == "lost"][0][2]
        assert not (tmp_path / f"t{trial}" / ".lock").exists()  # released, nothing left


def test_the_lock_records_an_absolute_folder_and_a_safe_mode(tmp_path, monkeypatch):
    from experiments.locks import take_lock

    monkeypatch.chdir(tmp_path)
    old = os.umask(0)
    try:
        lock = take_lock("rel")
        lock.record(pgid=os.getpid(), folder=Path("rel/points/.tmp-x"))
        doc = json.loads((tmp_path / "rel" / ".lock").read_text())
        mode = stat.S_IMODE((tmp_path / "rel" / ".lock").stat().st_mode)
    finally:
        os.umask(old)
        lock.release()
    assert doc["folder"] == str(tmp_path / "rel" / "points" / ".tmp-x")
    assert doc["pgid_start"] == start_ticks(os.getpid()) and doc["pid_start"]
    assert mode == 0o644
    assert not (tmp_path / "rel" / ".lock").exists()


def test_locks_with_spaces_old_formats_other_hosts_and_a_second_taker(tmp_path):
    """Nothing here names a live process, so it runs in this process."""
    from experiments.locks import take_lock

    root = tmp_path / "a folder"
    folder = root / "points" / ".tmp-a b"
    write_lock(root, pid=DEAD, pgid=DEAD, pgid_start=5, folder=str(folder),
               board="progress-node1.bin")
    lock = take_lock(root, ".lock", "progress.bin")  # a dead sweep's lock: taken over
    assert json.loads((root / ".lock").read_text())["pid"] == os.getpid()
    with pytest.raises(ValueError, match="is in use by a running sweep \\(pid "
                                         f"{os.getpid()} on "):
        take_lock(root)  # a second taker, even in the same process, is refused
    lock.record(pgid=DEAD, folder=folder, board="progress-node1.bin")
    assert json.loads((root / ".lock").read_text())["folder"] == str(folder)
    lock.release()
    assert not (root / ".lock").exists()
    (root / ".lock").write_text(f"{DEAD} {DEAD} {folder}\n")  # the older plain format
    take_lock(root).release()
    write_lock(root, host="elsewhere", pid=7)
    with pytest.raises(ValueError, match="is locked by a sweep on host 'elsewhere' \\(pid 7\\);"
                                         " if no sweep uses this folder, remove"):
        take_lock(root)
    assert json.loads((root / ".lock").read_text())["host"] == "elsewhere"  # left as it was


def test_the_recorded_start_time_alone_proves_nothing(tmp_path, procs):
    """A decoy group whose leader started when the lock says, but whose command line is
    not ``jitterlab worker`` of the folder's plan (or names the plan without jitterlab):
    refused, never signalled."""
    root = tmp_path / "out"
    folder = root / "points" / ".tmp-abc"
    for extra in ((), ("worker", str(folder / "plan.json"))):
        victim = decoy(*extra)
        procs.append(victim)
        wait_started(victim)
        write_lock(root, pid=DEAD, pgid=victim.pid, pgid_start=start_ticks(victim.pid),
                   folder=str(folder))
        res = take_in_child(root)
        time.sleep(0.2)
        assert victim.poll() is None and res.stdout.startswith("refused:"), res.stdout


def group_of(pgid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


def test_when_the_launcher_is_gone_each_member_of_its_group_proves_itself(tmp_path):
    """The lock's group leader has exited; its group still holds a rank of the folder's
    plan and an unrelated process. Refused (nothing signalled) while the stranger is
    there; once it is gone, the rank is stopped."""
    root = tmp_path / "out"
    folder = root / "points" / ".tmp-abc"
    folder.mkdir(parents=True)
    sleep = f"{sys.executable} -c 'import time; time.sleep(1000)'"
    leader = subprocess.Popen(["sh", "-c", f"{sleep} jitterlab worker {folder}/plan.json & "
                               f"{sleep} &"], start_new_session=True)
    leader.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(group_of(leader.pid)) < 2:
        time.sleep(0.05)
    members = group_of(leader.pid)
    assert len(members) == 2
    time.sleep(0.5)  # both have exec'd their final command lines
    rank = next(p for p in members if b"worker" in Path(f"/proc/{p}/cmdline").read_bytes())
    stranger = next(p for p in members if p != rank)
    try:
        write_lock(root, pid=DEAD, pgid=leader.pid, pgid_start=1, folder=str(folder))
        res = take_in_child(root)
        assert res.stdout.startswith("refused:") and f"pid {stranger}" in res.stdout
        assert group_of(leader.pid) == members or sorted(group_of(leader.pid)) == \
            sorted(members)
        os.kill(stranger, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and stranger in group_of(leader.pid):
            time.sleep(0.05)
        assert take_in_child(root).stdout.strip() == "taken"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and rank in group_of(leader.pid):
            time.sleep(0.05)
        assert rank not in group_of(leader.pid)  # stopped
    finally:
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_after_a_reboot_nothing_the_lock_names_is_signalled(tmp_path, procs):
    """Another boot's lock: no process of that run can be alive, so what now has its
    pids is left alone, and the folder is free."""
    victim = decoy("jitterlab", "worker", str(tmp_path / "out/points/.tmp-abc/plan.json"))
    procs.append(victim)
    wait_started(victim)
    write_lock(tmp_path / "out", pid=victim.pid, pgid=victim.pid,
               pgid_start=start_ticks(victim.pid), boot_id="another-boot",
               folder=str(tmp_path / "out" / "points" / ".tmp-abc"))
    assert take_in_child(tmp_path / "out").stdout.strip() == "taken"
    time.sleep(0.2)
    assert victim.poll() is None


@pytest.mark.parametrize("kind", ["hard link", "fifo", "symlink"])
def test_a_lock_that_is_not_a_plain_file_is_refused_and_left_as_it_is(tmp_path, kind):
    """The lock is rewritten in place: through a hard link it would overwrite another
    file, and a FIFO would block the open."""
    root = tmp_path / "out"
    root.mkdir()
    other = tmp_path / "precious.txt"
    other.write_text("IMPORTANT DATA\n")
    if kind == "hard link":
        os.link(other, root / ".lock")
    elif kind == "symlink":
        os.symlink(other, root / ".lock")
    else:
        os.mkfifo(root / ".lock")
    res = take_in_child(root, timeout=30)
    assert res.stdout.startswith("refused:") and str(root / ".lock") in res.stdout, res
    assert other.read_text() == "IMPORTANT DATA\n"
