"""Shared test settings.

Hypothesis runs with a fixed, derandomized profile (the same examples every run, no
deadline): CI and developers see the same results. Set HYPOTHESIS_PROFILE=explore to
search with fresh random examples locally.

Statistical tests use fixed seeds, so each is deterministic; each states the rate at
which it would fail for a correct implementation under a random seed (its significance
level).
"""

import contextlib
import io
import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=200,
                          print_blob=True)
settings.register_profile("explore", deadline=None, max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def cli(capsys):
    """``jitterlab ARGS`` in this process: a CompletedProcess-like result (returncode,
    stdout, stderr); argparse's SystemExit becomes its code, and os.environ is restored
    (``--max-ranks-per-host`` sets a variable for the processes a run would start)."""
    from experiments.cli import main

    def call(*args: str) -> subprocess.CompletedProcess:
        env = os.environ.copy()
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = exc.code
        finally:
            for key in set(os.environ) - set(env):
                del os.environ[key]
            os.environ.update(env)
        out = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out.out, out.err)

    return call


def jitterlab_here(*args: str, cwd: str | Path | None = None,
                   env: Mapping[str, str] | None = None,
                   umask: int | None = None) -> subprocess.CompletedProcess:
    """``jitterlab ARGS`` run as ``experiments.cli.main`` in this process, from ``cwd``,
    with ``env`` added to the environment and under ``umask``: a CompletedProcess-like
    result. The ranks a run starts are real processes as always; what this saves is the
    console script's start-up (its imports, torch's among them: seconds a command). cwd,
    environment, umask and the SIGTERM handler ``run`` installs are restored after."""
    from experiments.cli import main

    saved_env, saved_cwd = os.environ.copy(), os.getcwd()
    saved_term = signal.getsignal(signal.SIGTERM)
    saved_umask = None if umask is None else os.umask(umask)
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.update(env or {})
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:
                code = exc.code
    finally:
        os.chdir(saved_cwd)
        for key in set(os.environ) - set(saved_env):
            del os.environ[key]
        os.environ.update(saved_env)
        signal.signal(signal.SIGTERM, saved_term)
        if saved_umask is not None:
            os.umask(saved_umask)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def jitterlab():
    """``jitterlab_here``, for tests and module-scoped fixtures (no capsys needed)."""
    return jitterlab_here
