"""Durations: parsed once at the edge into float seconds, formatted for people in µs.

Parsing builds the float from the decimal text and the unit's power of ten in exact
decimal arithmetic, then rounds once, so ``"50us"`` is exactly ``50e-6`` and
``parse_duration(format_duration(x)) == x`` for every finite non-negative float.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

# Case-sensitive: "ms" is milli, "Ms" is an error. Both micro signs are accepted:
# U+00B5 (MICRO SIGN) and U+03BC (GREEK SMALL LETTER MU).
UNIT_EXPONENTS: dict[str, int] = {
    "ns": -9, "us": -6, "\u00b5s": -6, "\u03bcs": -6, "ms": -3, "s": 0}

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_DURATION_RE = re.compile(rf"^\s*({_NUMBER})\s*([A-Za-z\u00b5\u03bc]+)\s*$")
_BARE_RE = re.compile(rf"^\s*({_NUMBER})\s*$")
_UNIT_HELP = "ns, us (or µs), ms or s"

# The longest delay a schedule may ask for. A duration parameter of a distribution above it
# is rejected when parsed; a draw above it (the tail of an unbounded law, a sum) is clipped
# to it and counted. Without a bound a delay of 2**63 ns or more wraps to INT64_MIN as an
# int64 and nothing at all is injected.
MAX_DELAY_S = 3600.0
MAX_DELAY_NS = 3_600_000_000_000


def scaled_float(text: str, exponent: int) -> float:
    """Exact decimal text * 10**exponent, rounded once to the nearest float."""
    sign, digits, exp = Decimal(text).as_tuple()
    return float(Decimal((sign, digits, exp + exponent)))


def parse_duration(value: object) -> float:
    """Parse ``"50us"``-style text (or the number 0) into float seconds.

    Raises ``ValueError`` naming the value for a missing or unknown unit, a bool, a
    non-finite or a negative duration.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: a bool is not a duration")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"invalid duration {value!r}: not a finite number")
        if value == 0:
            return 0.0
        raise ValueError(f"invalid duration {value!r}: a bare number needs a unit ({_UNIT_HELP})")
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {value!r}: expected text such as '50us'")
    match = _DURATION_RE.match(value)
    if match is None:
        bare = _BARE_RE.match(value)
        if bare is not None:
            if Decimal(bare.group(1)) == 0:
                return 0.0
            raise ValueError(
                f"invalid duration {value!r}: a bare number needs a unit ({_UNIT_HELP})"
            )
        if "nan" in value.lower() or "inf" in value.lower():
            raise ValueError(f"invalid duration {value!r}: not a finite number")
        raise ValueError(f"invalid duration {value!r}: expected a number and a unit ({_UNIT_HELP})")
    number, unit = match.groups()
    if unit not in UNIT_EXPONENTS:
        raise ValueError(f"invalid duration {value!r}: unknown unit {unit!r} (use {_UNIT_HELP})")
    try:
        seconds = scaled_float(number, UNIT_EXPONENTS[unit])
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only valid numbers
        raise ValueError(f"invalid duration {value!r}: {exc}") from None
    if Decimal(number) < 0:
        raise ValueError(f"invalid duration {value!r}: durations cannot be negative")
    if not math.isfinite(seconds):
        raise ValueError(f"invalid duration {value!r}: not a finite number of seconds")
    if seconds == 0 and Decimal(number) != 0:
        raise ValueError(f"invalid duration {value!r}: too small to represent (underflows to 0)")
    return abs(seconds)  # "-0us" -> 0.0


def _decimal_text(d: Decimal) -> str:
    """Shorter of the plain and the scientific spelling of a decimal."""
    d = d.normalize()
    plain = format(d, "f")
    sign, digits, exp = d.as_tuple()
    mantissa = "".join(map(str, digits))
    if len(mantissa) > 1:
        mantissa = mantissa[0] + "." + mantissa[1:]
    sci = f"{'-' if sign else ''}{mantissa}e{exp + len(digits) - 1}"
    return plain if len(plain) <= len(sci) else sci


def format_duration(seconds: float) -> str:
    """The shortest spec text (``"50us"``, ``"1.5ms"``) that parses back to ``seconds``."""
    seconds = float(seconds)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {seconds!r}: must be finite and non-negative")
    if seconds == 0:
        return "0s"
    shortest = Decimal(repr(seconds))  # repr is the shortest text that round-trips
    best = None
    # Preference among equally short spellings: a mantissa in [1, 1000) first.
    for unit in ("us", "ms", "ns", "s"):
        scaled = shortest.scaleb(-UNIT_EXPONENTS[unit])
        text = _decimal_text(scaled) + unit
        key = (len(text), not (1 <= scaled < 1000))
        if best is None or key < best[0]:
            best = (key, text)
    return best[1]


def format_us(seconds: float, digits: int = 2) -> str:
    """Seconds as a plain number of microseconds for tables (``inf`` stays ``inf``);
    below 1 µs, three significant digits so nanosecond delays do not print as 0.00."""
    if math.isinf(seconds):
        return "inf"
    if math.isnan(seconds):
        return "nan"
    us = seconds * 1e6
    if 0 < abs(us) < 1:
        return f"{us:.3g}"
    return f"{us:.{digits}f}"


def to_ns(seconds: float) -> int:
    """Float seconds to int64-compatible integer nanoseconds (rounded to nearest)."""
    return int(round(seconds * 1e9))
