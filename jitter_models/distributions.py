"""Delay distributions: one protocol, one small class per family, a registry.

Every value is a finite, non-negative float64 number of seconds. Parameters that are
durations are float seconds here; text such as ``"50us"`` is parsed at the edge
(:func:`parse`). The protocol and the registry live in ``protocol.py``, the parametric
families in ``parametric.py``; the composite families (mixture, empirical, shifted, clip)
in ``composite.py`` and the truncated normal in ``normal.py``. All register themselves in
the same registry; this module is their public home and the parser.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .parametric import (
    Constant,
    Exponential,
    Gamma,
    Lognormal,
    Pareto,
    ScipyDistribution,
    Uniform,
    Weibull,
)
from .protocol import FAMILIES, Distribution, register
from .syntax import Call, kwargs_from_call, kwargs_from_table, parse_call
from .units import format_duration

__all__ = [
    "FAMILIES", "Constant", "Distribution", "Exponential", "Gamma", "Lognormal", "Pareto",
    "ScipyDistribution", "Uniform", "Weibull", "parse", "register", "to_table",
]


def _family(name: str) -> type[Distribution]:
    from . import composite, normal  # noqa: F401  (they register their families)

    try:
        return FAMILIES[name]
    except KeyError:
        known = ", ".join(sorted(FAMILIES))
        raise ValueError(f"unknown distribution family {name!r} (known: {known})") from None


def parse(spec: str | Mapping[str, Any] | Call | Distribution) -> Distribution:
    """A distribution from its string form, its TOML-table form, or itself.

    ``parse("lognormal(median=50us, sigma=0.8)")``, ``parse("constant(5us)")``,
    ``parse({"family": "lognormal", "median": "50us", "sigma": 0.8})``.
    ``parse(str(d)) == d`` for every distribution ``d``.
    """
    if isinstance(spec, Distribution):
        return spec
    if isinstance(spec, str):
        spec = parse_call(spec)
    if isinstance(spec, Call):
        cls = _family(spec.name)
        return cls(**kwargs_from_call(cls.family, cls.params, spec, parse))
    if isinstance(spec, Mapping):
        name = spec.get("family")
        if not isinstance(name, str):
            raise ValueError(f"distribution table needs a 'family' string, got {dict(spec)!r}")
        cls = _family(name)
        return cls(**kwargs_from_table(cls.family, cls.params, spec, parse))
    raise ValueError(f"expected a distribution spec (text or table), got {spec!r}")


def to_table(dist: Distribution) -> dict[str, Any]:
    """The TOML-table form of ``dist`` (inverse of :func:`parse` on tables)."""
    out: dict[str, Any] = {"family": dist.family}
    for p in dist.params:
        v = getattr(dist, p.attr)
        if p.kind == "components":
            out[p.name] = [{"weight": w, "dist": to_table(d)} for w, d in v]
        elif p.kind == "dist":
            out[p.name] = to_table(v)
        elif p.kind == "duration":
            out[p.name] = format_duration(v)
        else:
            out[p.name] = v
    return out
