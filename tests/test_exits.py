"""The rank that died, as the launcher's log says (issue 8: a SIGKILLed gloo rank was
reported as 'ranks [0, 1] stopped at #8291'). The logs below are what torchrun (torch
2.13) and Open MPI 5's prterun printed here when rank 1 was SIGKILLed mid-run."""

from __future__ import annotations

from launch.exits import RankExit, log_rank_exits, rank_exits

TORCHRUN = """\
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
======================================================
/work/main/.venv/bin/jitterlab FAILED
------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-01_19:55:47
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 6078)  (SIGTERM)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 6078
------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-01_19:55:47
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 6079)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 6079
======================================================
"""

PRTERUN_SIGNAL = """\
--------------------------------------------------------------------------
prterun noticed that process rank 1 with PID 6175 on node vm exited on
signal 9 (Killed).
--------------------------------------------------------------------------
"""

PRTERUN_STATUS = """\
prterun detected that one or more processes exited with non-zero status,
thus causing the job to be terminated. The first process to do so was:

   Process name: [prterun-vm-6227@1,3]
   Exit code:    7
"""


def test_torchrun_root_cause_comes_first():
    exits = rank_exits(TORCHRUN)
    assert exits == [RankExit(1, None, 9), RankExit(0, None, 15)]
    assert str(exits[0]) == "rank 1 was killed by signal 9 (SIGKILL)"


def test_open_mpi_signal_and_status():
    assert rank_exits(PRTERUN_SIGNAL) == [RankExit(1, None, 9)]
    assert rank_exits(PRTERUN_STATUS) == [RankExit(3, 7, None)]
    assert str(rank_exits(PRTERUN_STATUS)[0]) == "rank 3 exited with code 7"


def test_clean_or_missing_logs_name_nobody(tmp_path):
    ok = TORCHRUN.replace("-9 (pid", "0 (pid").replace("-15 (pid", "0 (pid")
    assert rank_exits(ok) == [] and rank_exits("") == []
    assert log_rank_exits(tmp_path / "none.log") == []
    (tmp_path / "big.log").write_text("x" * 1_000_000 + PRTERUN_SIGNAL)  # only the tail
    assert log_rank_exits(tmp_path / "big.log") == [RankExit(1, None, 9)]
