"""Shared test settings.

Hypothesis runs with a fixed, derandomized profile (the same examples every run, no
deadline): CI and developers see the same results. Set HYPOTHESIS_PROFILE=explore to
search with fresh random examples locally.

Statistical tests use fixed seeds, so each is deterministic; each states the rate at
which it would fail for a correct implementation under a random seed (its significance
level).
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=200,
                          print_blob=True)
settings.register_profile("explore", deadline=None, max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
