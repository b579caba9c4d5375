"""What delay, for whom, when: distributions, schedules and order statistics.

numpy and scipy only: this package imports without torch.
"""

from .composite import Clip, Empirical, Mixture, Shifted
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
from .normal import Normal
from .order_stats import expected_max, max_quantile, prob_max_exceeds, sample_max
from .schedules import (
    AR1,
    IID,
    Bursty,
    Schedule,
    Stragglers,
    check_unique_names,
    parse_schedule,
    parse_temporal,
    schedule_from_table,
    schedules_from_toml,
)
from .units import format_duration, format_us, parse_duration

__all__ = [
    "AR1", "IID", "Bursty", "Schedule", "Stragglers", "parse_schedule", "parse_temporal",
    "schedule_from_table", "schedules_from_toml", "check_unique_names",
    "FAMILIES", "Clip", "Constant", "Distribution", "Empirical", "Exponential", "Gamma",
    "Lognormal", "Mixture", "Normal", "Pareto", "Shifted", "Uniform", "Weibull",
    "expected_max", "format_duration", "format_us", "max_quantile", "parse",
    "parse_duration", "prob_max_exceeds", "sample_max", "to_table",
]
