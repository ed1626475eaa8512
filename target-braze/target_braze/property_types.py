"""Declared Braze types for properties a tap sends as text (a CSV file's every value).

A CSV tap types every column as a string, so a churn score reached Braze as `"87.5"` and
a JSON `properties` column as one long string. `stream_mappings.<stream>.property_types`
names the Braze type of such a property; each value is converted once, when its record
is built, and a value that is not of that type rejects the record with a reason naming
the property. An empty string is a missing value (null): a CSV's empty cell.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from target_braze.values import UnsendableValue

_INTEGER = re.compile(r"[+-]?\d+")
_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})


def _number(value: Any, name: str) -> int | float:
    if isinstance(value, bool):
        raise UnsendableValue(f"property '{name}' is true or false, not a number (property_types)")
    if isinstance(value, int | float):
        return value
    text = str(value).strip()
    if _INTEGER.fullmatch(text):
        return int(text)
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise UnsendableValue(
            f"property '{name}': {_shown(value)} is not a number (property_types)"
        )
    return number


def _integer(value: Any, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    if not _INTEGER.fullmatch(text):
        raise UnsendableValue(
            f"property '{name}': {_shown(value)} is not a whole number (property_types)"
        )
    return int(text)


def _boolean(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise UnsendableValue(
        f"property '{name}': {_shown(value)} is not true or false (true/false, yes/no, 1/0; "
        "property_types)"
    )


def _time(value: Any, name: str) -> Any:
    return value  # normalised to ISO 8601 UTC as any date-time property (the builder's rule)


def _json(value: Any, name: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        raise UnsendableValue(f"property '{name}' is not valid JSON (property_types)") from None


#: Each declared type: its converter, and the Python types a converted value has.
CONVERTERS: dict[str, tuple[Callable[[Any, str], Any], tuple[type, ...]]] = {
    "number": (_number, (int, float)),
    "integer": (_integer, (int,)),
    "boolean": (_boolean, (bool,)),
    "time": (_time, (str,)),
    "json": (_json, (dict, list, str, int, float, bool)),
}
TYPES = tuple(CONVERTERS)


class TypedProperties:
    """The converters of one stream's declared property types."""

    __slots__ = ("_converters",)

    def __init__(self, declared: Mapping[str, str]) -> None:
        """`declared`: property name -> one of `TYPES` (checked by `StreamSettings`)."""
        self._converters = {name: CONVERTERS[kind][0] for name, kind in declared.items()}

    def convert(self, record: dict[str, Any]) -> dict[str, Any]:
        """A copy of `record` with each declared property converted (raises `UnsendableValue`)."""
        converted = dict(record)
        for name, convert in self._converters.items():
            value = converted.get(name)
            if value is None:
                continue
            if value == "":
                converted[name] = None
                continue
            converted[name] = convert(value, name)
        return converted


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
