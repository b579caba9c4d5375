"""Schedules: who is delayed, at which site, by how much. The unit that sweeps vary.

The public home of schedules; the pieces live in ``schedule.py`` (the ``Schedule`` type:
its draws, its one-line text and its table), ``schedule_parse.py`` (a schedule from a
``[[jitter]]`` table or the one-line form) and ``stragglers.py`` (``Stragglers`` and the
stream tags).
"""

from .schedule import SCOPES, Schedule, Scope
from .schedule_parse import (
    check_unique_names,
    parse_schedule,
    schedule_from_table,
    schedules_from_toml,
)
from .stragglers import Stragglers

__all__ = ["SCOPES", "Schedule", "Scope", "Stragglers", "check_unique_names",
           "parse_schedule", "schedule_from_table", "schedules_from_toml"]
