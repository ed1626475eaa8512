"""Value conversion for Braze: numbers, date-times, nested objects, unsendable values."""

import datetime as dt
from decimal import Decimal

import pytest
from target_braze.build import UnsendableValue, normalise_datetime_string, to_braze


def test_decimal_integral_becomes_int_and_fraction_becomes_float():
    assert to_braze(Decimal("42"), "x") == 42
    assert type(to_braze(Decimal("42"), "x")) is int
    assert to_braze(Decimal("0.125"), "x") == 0.125


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("Infinity"), float("nan"), float("inf")])
def test_nan_and_infinity_are_rejected_naming_the_property(value):
    with pytest.raises(UnsendableValue, match="'peak_ltv'"):
        to_braze(value, "peak_ltv")


def test_datetimes_become_iso_utc():
    aware = dt.datetime(2026, 1, 1, 7, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert to_braze(aware, "t") == "2026-01-01T05:00:00+00:00"
    assert to_braze(dt.datetime(2026, 1, 1, 5), "t") == "2026-01-01T05:00:00+00:00"
    assert to_braze(dt.date(2026, 1, 2), "d") == "2026-01-02"


def test_datetime_strings_are_normalised_to_utc():
    assert normalise_datetime_string("2026-01-01T07:00:00+02:00", "t") == (
        "2026-01-01T05:00:00+00:00"
    )
    assert normalise_datetime_string("2026-01-01T05:00:00Z", "t") == "2026-01-01T05:00:00+00:00"
    assert normalise_datetime_string("2026-01-01 05:00:00", "t") == "2026-01-01T05:00:00+00:00"
    with pytest.raises(UnsendableValue, match="'t' is not an ISO 8601"):
        normalise_datetime_string("yesterday", "t")


def test_nested_dates_become_dollar_time_and_decimals_numbers():
    value = {"last": dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "score": Decimal("1.5")}
    assert to_braze(value, "obj") == {
        "last": {"$time": "2026-01-01T00:00:00+00:00"},
        "score": 1.5,
    }


def test_nested_keys_with_dots_dollars_or_spaces_are_rejected():
    for key in ("a.b", "$a", "a b"):
        with pytest.raises(UnsendableValue, match="nested key"):
            to_braze({key: 1}, "obj")


def test_string_over_255_characters_is_rejected():
    assert to_braze("x" * 255, "s") == "x" * 255
    with pytest.raises(UnsendableValue, match="256 characters"):
        to_braze("x" * 256, "s")


def test_string_arrays_pass_and_mixed_arrays_are_rejected():
    assert to_braze(["a", "b"], "tags") == ["a", "b"]
    with pytest.raises(UnsendableValue, match="mixes types"):
        to_braze(["a", 1], "tags")


def test_nested_object_over_100_kb_is_rejected():
    big = {f"k{i}": "x" * 200 for i in range(600)}
    with pytest.raises(UnsendableValue, match="nested object of"):
        to_braze(big, "obj")


def test_unknown_types_are_rejected():
    with pytest.raises(UnsendableValue, match="type bytes"):
        to_braze(b"raw", "blob")
