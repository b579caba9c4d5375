"""Shared test settings.

Hypothesis runs with a fixed, derandomized profile (the same examples every run, no
deadline): CI and developers see the same results. Set HYPOTHESIS_PROFILE=explore to
search with fresh random examples locally.

Statistical tests use fixed seeds, so each is deterministic; each states the rate at
which it would fail for a correct implementation under a random seed (its significance
level).
"""

import os
import subprocess

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
