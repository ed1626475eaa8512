"""Turning Singer values into values Braze accepts, or saying why they cannot be sent.

Braze takes strings, numbers, booleans, ISO 8601 date-times, arrays of strings, nested
objects and arrays of objects. singer-sdk hands us `Decimal` numbers (its JSON reader
parses every float as `Decimal`) and, depending on the reader, `datetime`/`date`
objects; `requests`/`orjson` cannot send `Decimal`, and Braze cannot store NaN or
Infinity, so every value goes through `to_braze`.
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from typing import Any

import orjson

MAX_STRING_LENGTH = 255
MAX_NESTED_OBJECT_BYTES = 100 * 1024
#: Nested objects and arrays deeper than this are refused: far beyond what a profile
#: attribute needs, and well inside what the JSON encoders (orjson: 254) can write.
MAX_NESTING_DEPTH = 32
_UTC = dt.UTC


class UnsendableValue(ValueError):
    """A value Braze cannot take; the message is the reason written to the rejects output."""


def iso_utc(value: dt.datetime) -> str:
    """ISO 8601 in UTC with an explicit offset; naive datetimes are UTC (as Braze reads them)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=_UTC)
    elif value.utcoffset() != dt.timedelta(0):
        value = value.astimezone(_UTC)
    return value.isoformat()


# Recently normalised date-time strings: a model run stamps many rows with one time, so
# most strings repeat. Bounded: emptied when full.
_NORMALISED: dict[str, str] = {}
_NORMALISED_MAX = 4096


def normalise_datetime_string(value: str, name: str) -> str:
    """Re-express a date-time string in UTC; Braze reads a zone-less time as UTC anyway."""
    cached = _NORMALISED.get(value)
    if cached is not None:
        return cached
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00", 1))
    except ValueError:
        raise UnsendableValue(f"'{name}' is not an ISO 8601 date-time: {value[:40]!r}") from None
    normalised = iso_utc(parsed)
    if len(_NORMALISED) >= _NORMALISED_MAX:
        _NORMALISED.clear()
    _NORMALISED[value] = normalised
    return normalised


def _number(value: Decimal, name: str) -> int | float:
    if not value.is_finite():
        raise UnsendableValue(f"'{name}' is {value}, which Braze cannot store")
    if value == value.to_integral_value():
        return int(value)
    return float(value)


def to_braze(value: Any, name: str, *, check_string_length: bool = True) -> Any:
    """Convert one top-level attribute or property value.

    Raises:
        UnsendableValue: with a reason naming the property.

    """
    # Fast path first: most values are already what Braze takes.
    kind = type(value)
    if kind is str:
        if check_string_length and len(value) > MAX_STRING_LENGTH:
            raise UnsendableValue(
                f"'{name}' is {len(value)} characters long; Braze stores at most "
                f"{MAX_STRING_LENGTH}"
            )
        return value
    if value is None or kind is bool or kind is int:
        return value
    if kind is float:
        if math.isfinite(value):
            return value
        raise UnsendableValue(f"'{name}' is {value}, which Braze cannot store")
    if kind is Decimal:
        return _number(value, name)
    if isinstance(value, dt.datetime):
        return iso_utc(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, list):
        return _array(value, name)
    if isinstance(value, dict):
        return _nested_object(value, name)
    raise UnsendableValue(f"'{name}' has a value of type {kind.__name__}, which Braze cannot store")


def _array(value: list[Any], name: str) -> list[Any]:
    if all(type(item) is str for item in value):
        return value
    if all(isinstance(item, dict) for item in value):
        converted = [_nested(item, f"{name}[{i}]") for i, item in enumerate(value)]
        _check_nested_size(converted, name)
        return converted
    raise UnsendableValue(
        f"'{name}' mixes types in an array; Braze takes arrays of strings or of objects"
    )


def _nested_object(value: dict[str, Any], name: str) -> dict[str, Any]:
    converted = _nested(value, name)
    _check_nested_size(converted, name)
    return converted


def _check_nested_size(converted: Any, name: str) -> None:
    try:
        size = len(orjson.dumps(converted))
    except orjson.JSONEncodeError as exc:
        raise UnsendableValue(f"'{name}' cannot be sent as JSON ({exc})") from None
    if size > MAX_NESTED_OBJECT_BYTES:
        raise UnsendableValue(
            f"'{name}' is a nested object of {size} bytes; Braze takes at most "
            f"{MAX_NESTED_OBJECT_BYTES}"
        )


def _nested(value: Any, name: str, depth: int = 1) -> Any:
    """Convert inside nested objects, where Braze wants dates as {"$time": iso}."""
    if depth > MAX_NESTING_DEPTH and isinstance(value, dict | list):
        raise UnsendableValue(
            f"'{name.split('.', 1)[0].split('[', 1)[0]}' is nested deeper than "
            f"{MAX_NESTING_DEPTH} levels; Braze nested attributes are meant to be shallow"
        )
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str) or "." in key or "$" in key or " " in key:
                raise UnsendableValue(
                    f"'{name}' has the nested key {str(key)[:40]!r}; Braze forbids '.', '$' "
                    "and spaces in nested keys"
                )
            out[key] = _nested(item, f"{name}.{key}", depth + 1)
        return out
    if isinstance(value, list):
        return [_nested(item, f"{name}[{i}]", depth + 1) for i, item in enumerate(value)]
    if isinstance(value, dt.datetime):
        return {"$time": iso_utc(value)}
    if isinstance(value, dt.date):
        return {"$time": value.isoformat()}
    return to_braze(value, name, check_string_length=False)
