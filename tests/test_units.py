"""Durations: parse_duration, format_duration, format_us (jitter_models.units).

Expected values are computed independently of the library: a duration text is the
exact decimal number times the unit's power of ten, rounded once to the nearest float,
which is what ``float(Decimal("<number>e<exponent>"))`` gives.
"""

import math
import re
from decimal import ROUND_HALF_EVEN, Context, Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from jitter_models.units import format_duration, format_us, parse_duration

MICRO_SIGN, GREEK_MU = "\u00b5", "\u03bc"
UNIT_EXPONENTS = {"ns": -9, "us": -6, MICRO_SIGN + "s": -6, GREEK_MU + "s": -6, "ms": -3, "s": 0}
UNIT_HELP = "ns, us (or µs), ms or s"


def exact_seconds(number: str, unit: str) -> float:
    """The correctly rounded float of the decimal ``number`` in ``unit``."""
    return float(Decimal(number).scaleb(UNIT_EXPONENTS[unit]))


def raises_naming(value, reason: str):
    """pytest.raises for ValueError whose message names ``value`` and gives ``reason``."""
    return pytest.raises(ValueError,
                         match=re.escape(f"invalid duration {value!r}: {reason}"))


# --- parsing: values ------------------------------------------------------------------


@pytest.mark.parametrize("text, number, unit", [
    ("200ns", "200", "ns"),
    ("3ns", "3", "ns"),  # 3 * 1e-9 in floats is 3.0000000000000004e-09: must not be that
    ("50us", "50", "us"),
    ("50\u00b5s", "50", "us"),  # MICRO SIGN
    ("50\u03bcs", "50", "us"),  # GREEK SMALL LETTER MU
    ("0.1us", "0.1", "us"),
    ("1.5ms", "1.5", "ms"),
    ("1.1ms", "1.1", "ms"),
    ("0.002s", "0.002", "s"),
    ("1e3us", "1e3", "us"),
    ("2.5E-1ms", "2.5E-1", "ms"),
    (".5ms", ".5", "ms"),
    ("5.ms", "5.", "ms"),
    ("+7us", "7", "us"),
    ("  50 us  ", "50", "us"),
])
def test_parse_is_the_correctly_rounded_decimal(text, number, unit):
    got = parse_duration(text)
    assert type(got) is float
    assert got == exact_seconds(number, unit)


def test_parse_exact_literals():
    assert parse_duration("50us") == 50e-6
    assert parse_duration("1.5ms") == 1.5e-3
    assert parse_duration("200ns") == 200e-9
    assert parse_duration("0.002s") == 0.002
    assert parse_duration("1e3us") == 1e-3


def test_both_micro_signs_mean_micro():
    assert parse_duration("50\u00b5s") == parse_duration("50\u03bcs") == parse_duration("50us")


@given(mantissa=st.integers(0, 10**20), point=st.integers(0, 12), exp10=st.integers(-30, 30),
       unit=st.sampled_from(sorted(UNIT_EXPONENTS)))
def test_parse_random_decimals_round_once(mantissa, point, exp10, unit):
    digits = str(mantissa).rjust(point + 1, "0")
    number = f"{digits[:len(digits) - point]}.{digits[len(digits) - point:]}e{exp10}"
    assert parse_duration(number + unit) == exact_seconds(number, unit)


@pytest.mark.parametrize("zero", ["0", "0.0", " 0 ", "0e5", 0, 0.0, "0s", "0ns", "-0us"])
def test_zero_needs_no_unit_and_is_positive_zero(zero):
    got = parse_duration(zero)
    assert got == 0.0 and type(got) is float
    assert math.copysign(1.0, got) == 1.0


def test_a_nonzero_duration_that_underflows_is_an_error():
    # A nonzero duration must not silently become 0 (then e.g. "must be > 0, got 0.0").
    with pytest.raises(ValueError, match=r"'1e-400s': too small to represent"):
        parse_duration("1e-400s")
    assert parse_duration("0e-400s") == 0.0


# --- parsing: errors ------------------------------------------------------------------


@pytest.mark.parametrize("text, unit", [("5Ms", "Ms"), ("5US", "US"), ("5MS", "MS"),
                                        ("5Ns", "Ns"), ("5S", "S"), ("5sec", "sec")])
def test_units_are_case_sensitive(text, unit):
    with raises_naming(text, f"unknown unit {unit!r} (use {UNIT_HELP})"):
        parse_duration(text)


@pytest.mark.parametrize("value", ["50", " 50 ", "1e-6", 50, 1.5, -3])
def test_bare_nonzero_number_needs_a_unit(value):
    with raises_naming(value, f"a bare number needs a unit ({UNIT_HELP})"):
        parse_duration(value)


@pytest.mark.parametrize("value", [True, False])
def test_bool_is_not_a_duration(value):
    with raises_naming(value, "a bool is not a duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"),
                                   "nanus", "infms", "inf", "NaN s"])
def test_non_finite_is_an_error(value):
    with raises_naming(value, "not a finite number"):
        parse_duration(value)


def test_overflow_is_an_error():
    with raises_naming("1e400s", "not a finite number of seconds"):
        parse_duration("1e400s")


@pytest.mark.parametrize("value", ["-5us", "-1e-3ms", " -0.5s"])
def test_negative_is_an_error(value):
    with raises_naming(value, "durations cannot be negative"):
        parse_duration(value)


@pytest.mark.parametrize("value", ["", "us", "5 u s", "five us", "5us5"])
def test_malformed_text_is_an_error(value):
    with pytest.raises(ValueError, match=re.escape(f"invalid duration {value!r}: ")):
        parse_duration(value)


@pytest.mark.parametrize("value", [None, [5], b"5us"])
def test_non_text_is_an_error(value):
    with raises_naming(value, "expected text such as '50us'"):
        parse_duration(value)


# --- formatting -----------------------------------------------------------------------

durations = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False,
                      allow_subnormal=True)


@pytest.mark.parametrize("seconds, text", [
    (50e-6, "50us"), (1.5e-3, "1.5ms"), (2e-7, "200ns"), (0, "0s"), (0.0, "0s"),
    (1.0, "1s"), (1e-3, "1ms"), (1e6, "1e6s"), (5e-324, "5e-324s"), (1e-10, "0.1ns"),
])
def test_format_spot_checks(seconds, text):
    assert format_duration(seconds) == text


@given(durations)
@example(5e-324)
@example(2.2250738585072014e-308)
@example(0.1)
@example(1e6)
@example(123456.789)
def test_format_round_trips(seconds):
    text = format_duration(seconds)
    assert re.fullmatch(r"[0-9.e+-]+(ns|us|ms|s)", text), text
    assert parse_duration(text) == seconds


def _spellings(d: Decimal) -> set[str]:
    """Plain and scientific spellings of a decimal, without redundant zeros."""
    d = d.normalize()
    _, digits, exp = d.as_tuple()
    mantissa = "".join(map(str, digits))
    if len(mantissa) > 1:
        mantissa = mantissa[0] + "." + mantissa[1:]
    return {format(d, "f"), f"{mantissa}e{exp + len(digits) - 1}"}


def _round_tripping_candidates(seconds: float) -> list[str]:
    """Texts in every unit built from the exact binary value rounded to 1..17
    significant digits and from repr, kept when they parse back to ``seconds``."""
    exact = Decimal(seconds)
    out = []
    for unit, exponent in UNIT_EXPONENTS.items():
        scaled = [Context(prec=p, rounding=ROUND_HALF_EVEN).plus(exact.scaleb(-exponent))
                  for p in range(1, 18)]
        scaled.append(Decimal(repr(seconds)).scaleb(-exponent))
        out += [s + unit for d in scaled for s in _spellings(d)]
    return [t for t in out if parse_duration(t) == seconds]


@given(st.floats(min_value=0, max_value=1e6, exclude_min=True, allow_subnormal=True))
@example(50e-6)
@example(1.5e-3)
@example(3e-9)
@example(1 / 3)
@example(5e-324)
@example(999999.9999999999)
def test_no_unit_gives_a_strictly_shorter_round_tripping_text(seconds):
    text = format_duration(seconds)
    candidates = _round_tripping_candidates(seconds)
    assert candidates  # 17 significant digits always round-trip
    shortest = min(candidates, key=len)
    assert len(text) <= len(shortest), (seconds, text, shortest)


@pytest.mark.parametrize("seconds", [-1.0, -5e-324, -1e-6, float("nan"), float("inf"),
                                     float("-inf")])
def test_format_rejects_negative_and_non_finite(seconds):
    with pytest.raises(ValueError, match=re.escape(
            f"invalid duration {seconds!r}: must be finite and non-negative")):
        format_duration(seconds)


# --- format_us ------------------------------------------------------------------------


@pytest.mark.parametrize("seconds, kwargs, text", [
    (50e-6, {}, "50.00"),
    (0.0, {}, "0.00"),
    (1.23456e-3, {}, "1234.56"),
    (1.5e-6, {"digits": 3}, "1.500"),
    (2e-6, {"digits": 0}, "2"),
    (float("inf"), {}, "inf"),
    (float("nan"), {}, "nan"),
])
def test_format_us(seconds, kwargs, text):
    assert format_us(seconds, **kwargs) == text
