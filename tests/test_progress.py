"""The progress board's account of a stalled run: which rank, and how it stopped."""

from __future__ import annotations

import os

import numpy as np

from launch.progress import DONE, NOT_STARTED, READY, describe_stall

GONE = 2**22 + 4321  # above the default pid_max: no such process


def board(marks, pids):
    b = np.zeros((len(marks), 3), dtype=np.int64)
    b[:, 0], b[:, 2] = marks, pids
    return b


def test_the_rank_behind_is_named_with_where_it_stopped():
    assert describe_stall(board([5, 4, 5], [1, 1, 1])) == (
        "rank 1 stopped at collective #4 (others reached #5)")
    assert describe_stall(board([READY, 3], [1, 1])) == (
        "rank 0 stopped before its first collective (others reached #3)")
    assert describe_stall(board([NOT_STARTED, 2], [0, 1])) == (
        "ranks [0] never started (bootstrap did not finish)")
    assert describe_stall(board([DONE, DONE], [1, 1])) == "every rank finished"


def test_a_silent_rank_still_running_is_frozen_one_that_is_gone_exited_where_it_was():
    frozen = board([5, 4], [os.getpid(), os.getpid()])  # this process: alive
    assert describe_stall(frozen, silent=[1]) == "rank 1 stopped responding (no heartbeat)"
    exited = board([5, 4], [os.getpid(), GONE])
    assert describe_stall(exited, silent=[1]) == (
        "rank 1 stopped at collective #4 (others reached #5)")
    remote = board([5, 4], [os.getpid(), 0])  # another host's row: cannot be checked here
    assert describe_stall(remote, silent=[1]) == "rank 1 stopped responding (no heartbeat)"


def test_silence_counts_from_a_ranks_start_not_from_the_boards_creation(monkeypatch):
    # A loaded host can take longer than the silence limit to import torch: a rank whose
    # mark has only just left NOT_STARTED (first beat not yet counted) is not silent. Before
    # the fix the parent dated beat 0 from the board's creation and named every rank.
    import launch.progress as progress

    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    watch = progress.Watch()
    board = np.array([[NOT_STARTED, 0, 0, 0], [NOT_STARTED, 0, 0, 0]], dtype=np.int64)
    watch.update(board)
    clock[0] += 10.0  # the ranks are still starting
    watch.update(board)
    board[:, 0] = READY
    clock[0] += 0.5
    watch.update(board)
    assert watch.silent(board, after_s=3.0) == []
    # A rank that then stops beating is named once the limit has passed; one that beats is not.
    for _ in range(4):
        clock[0] += 1.0
        board[0, 1] += 1
        watch.update(board)
    assert watch.silent(board, after_s=3.0) == [1]
