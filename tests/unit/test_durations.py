"""Durations: numbers are seconds, strings carry a unit (s m h d w), bad values are named."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from counterpoint.durations import DurationError, format_duration, parse_duration

MINUTE, HOUR, DAY, WEEK = 60.0, 3600.0, 86400.0, 604800.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(0, 0.0), (90, 90.0), (2.5, 2.5), ("90", 90.0), ("0", 0.0), (" 45 ", 45.0)],
)
def test_a_bare_number_is_a_number_of_seconds(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("30m", 30 * MINUTE),
        ("2h", 2 * HOUR),
        ("3d", 3 * DAY),
        ("1w", WEEK),
        ("0s", 0.0),
    ],
)
def test_each_unit_multiplies_the_number_by_its_length(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1.5h", 5400.0), (".5h", 1800.0), ("0.25d", 6 * HOUR), ("1.h", HOUR), ("2.5w", 2.5 * WEEK)],
)
def test_a_decimal_amount_with_a_unit_is_accepted(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_whitespace_around_and_inside_a_duration_is_ignored() -> None:
    assert parse_duration("  3 d ") == 3 * DAY


def test_a_day_is_twenty_four_hours_and_a_week_seven_days() -> None:
    assert parse_duration("1d") == parse_duration("24h")
    assert parse_duration("1w") == parse_duration("7d")


def test_parsing_always_returns_a_float() -> None:
    assert isinstance(parse_duration(5), float)
    assert isinstance(parse_duration("5m"), float)


@pytest.mark.parametrize(
    "text", ["3 dayz", "", "  ", "3x", "h", "3D", "1h30m", "three days", "3dd"]
)
def test_a_string_without_a_known_unit_is_rejected_and_named(text: str) -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration(text)
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize("value", ["-1", -1, -0.5, "-2h", "nan", math.nan, "inf", math.inf])
def test_a_negative_or_non_finite_duration_is_rejected_and_named(value: object) -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration(value)
    message = str(caught.value)
    assert repr(value) in message or str(value) in message


@pytest.mark.parametrize(("value", "shown"), [(True, "True"), (False, "False")])
def test_a_boolean_is_not_a_number_of_seconds(value: bool, shown: str) -> None:
    with pytest.raises(DurationError, match=shown):
        parse_duration(value)


@pytest.mark.parametrize(("value", "shown"), [(None, "None"), ([], "list"), ({}, "dict")])
def test_a_value_of_another_type_is_rejected_naming_its_type(value: object, shown: str) -> None:
    with pytest.raises(DurationError, match=shown):
        parse_duration(value)


def test_a_duration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="dayz"):
        parse_duration("3 dayz")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (45, "45s"),
        (90, "1.5m"),
        (5400, "1.5h"),
        (HOUR, "1h"),
        (3 * DAY, "3d"),
        (2 * WEEK, "2w"),
        (1.5 * DAY, "1.5d"),
    ],
)
def test_format_duration_picks_the_largest_unit_that_fits(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    "seconds",
    [0.0, 0.5, 1.0, 59.0, 90.0, 5400.0, HOUR, 6 * HOUR, DAY, 1.5 * DAY, 3 * DAY, WEEK, 52 * WEEK],
)
def test_format_duration_round_trips_exactly_for_round_values(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=1e-3, max_value=1000 * WEEK, allow_nan=False, allow_infinity=False))
def test_format_duration_round_trips_to_four_significant_digits(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, rel=1e-3)


@pytest.mark.parametrize("seconds", [1e-5, 12345.5 * WEEK, 1e10])
def test_format_duration_output_is_always_a_valid_duration(seconds: float) -> None:
    """Tiny and huge values must not come out in exponent form, which parsing rejects."""
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, rel=1e-3)
