"""What delay, for whom, when: distributions, schedules and order statistics.

numpy and scipy only: this package imports without torch.
"""

from .composite import Clip, Empirical, Mixture, Shifted
from .detours import Detours, Periodic, Trace, parse_detours
from .distributions import (
    FAMILIES,
    Constant,
    Distribution,
    Exponential,
    Gamma,
    Lognormal,
    Pareto,
    Uniform,
    Weibull,
    parse,
    to_table,
)
from .files import input_files
from .layout import node_of
from .normal import Normal
from .order_stats import expected_max, max_quantile, prob_max_exceeds, sample_max
from .schedules import (
    Schedule,
    Stragglers,
    check_unique_names,
    parse_schedule,
    schedule_from_table,
    schedules_from_toml,
)
from .temporal import AR1, IID, Bursty, Temporal, parse_temporal
from .units import format_duration, format_us, parse_duration

__all__ = [
    "AR1", "FAMILIES", "IID", "Bursty", "Clip", "Constant", "Detours", "Distribution",
    "Empirical", "Exponential", "Gamma", "Lognormal", "Mixture", "Normal", "Pareto",
    "Periodic", "Schedule", "Shifted", "Stragglers", "Temporal", "Trace", "Uniform", "Weibull",
    "check_unique_names", "expected_max", "format_duration", "format_us", "input_files",
    "max_quantile", "node_of", "parse", "parse_detours", "parse_duration", "parse_schedule",
    "parse_temporal", "prob_max_exceeds", "sample_max", "schedule_from_table",
    "schedules_from_toml", "to_table",
]
