"""Build: a stream's settings, checked against its schema, and a record made a Braze object.

Turning Singer values into values Braze accepts, or saying why they cannot be sent.

Braze takes strings, numbers, booleans, ISO 8601 date-times, arrays of strings, nested
objects and arrays of objects. singer-sdk hands us `Decimal` numbers (its JSON reader
parses every float as `Decimal`) and, depending on the reader, `datetime`/`date`
objects; `requests`/`orjson` cannot send `Decimal`, and Braze cannot store NaN or
Infinity, so every value goes through `to_braze`.

Declared Braze types for properties a tap sends as text (a CSV file's every value).

A CSV tap types every column as a string, so a churn score reached Braze as `"87.5"` and
a JSON `properties` column as one long string. `stream_mappings.<stream>.property_types`
names the Braze type of such a property; each value is converted once, when its record
is built, and a value that is not of that type rejects the record with a reason naming
the property. An empty string is a missing value (null): a CSV's empty cell.

Per-stream settings: the top-level defaults, overridden by `stream_mappings.<stream>`.

Resolved once per stream, when its SCHEMA arrives, and checked against that schema: a
setting naming a property the stream does not have fails there, before any request for
the stream, with the properties that do exist.

`ObjectBuilder`: one stream's records turned into Braze objects, or rejections with reasons.

Everything per stream is decided once, from its `StreamSettings` and SCHEMA; per property
name a rule is decided the first time the name is seen. The per-record work is one pass
over the record. With `validate_records`, each value's JSON type and the required
properties are checked in that same pass (a separate JSON Schema validator cost more than
all of the target's other per-record work); an invalid record is rejected with a reason
instead of ending the run.
"""

from __future__ import annotations

import datetime as dt
import difflib
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

from target_braze.errors import ConfigError
from target_braze.objects import BrazeObject, ObjectType, Origin, Rejection
from target_braze.settings import MAPPING_SETTINGS

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


_INTEGER = re.compile(r"[+-]?\d+")

_TRUE = frozenset({"true", "t", "yes", "y", "1"})

_FALSE = frozenset({"false", "f", "no", "n", "0"})


def _cast_number(value: Any, name: str) -> int | float:
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
    "number": (_cast_number, (int, float)),
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


# Settings that name a property of the stream's records.
PROPERTY_SETTINGS = (
    "identifier_property",
    "event_name_property",
    "time_property",
    "product_id_property",
    "currency_property",
    "price_property",
    "quantity_property",
    "properties_property",
    "deleted_property",
    "identify_property",
    "subscription_group_id_property",
    "subscription_state_property",
)

# How alike an unmatched `stream_mappings` key and a stream name must be to count as a typo.
_TYPO_SIMILARITY = 0.8


class StreamMappings:
    """The `stream_mappings` setting, and the rule that a typo in it cannot go unnoticed.

    A stream without an entry is sent with the top-level settings. That is what a user
    wants unless they meant an entry for it and misspelt the name (`app_event` for
    `app_events`): the stream would then be written to profiles as attributes. So a stream
    without an entry fails at its SCHEMA when an entry that has matched no stream so far
    is close to its name; `unmatched()` lists entries that matched nothing, for a warning
    at the end of the run.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        """Check every entry's keys; nothing is matched yet."""
        self._entries: dict[str, dict[str, Any]] = dict(config.get("stream_mappings") or {})
        self._matched: set[str] = set()
        for name, entry in self._entries.items():
            unknown = sorted(set(entry or {}) - set(MAPPING_SETTINGS))
            if unknown:
                raise ConfigError(
                    f"stream_mappings.{name} has unknown keys {unknown}; allowed: "
                    f"{', '.join(MAPPING_SETTINGS)}"
                )

    def entry_for(self, stream: str) -> dict[str, Any] | None:
        """The stream's entry, or None; raises `ConfigError` if a near miss looks like a typo."""
        if stream in self._entries:
            self._matched.add(stream)
            return self._entries[stream] or {}
        candidates = [name for name in self._entries if name not in self._matched]
        close = difflib.get_close_matches(stream, candidates, n=1, cutoff=_TYPO_SIMILARITY)
        if close:
            raise ConfigError(
                f"stream '{stream}' has no entry in stream_mappings, but the entry "
                f"'{close[0]}' matches no stream: rename it to '{stream}' (or, if both "
                f"streams exist, add an entry '{stream}' too) so the stream is not sent with "
                "the wrong settings"
            )
        return None

    def unmatched(self) -> list[str]:
        """Entries that matched no stream of the run."""
        return sorted(set(self._entries) - self._matched)


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """How one stream's records become Braze objects."""

    stream: str
    where: str  # where the settings came from, for messages
    identifier_property: str
    identifier_type: str
    alias_label: str | None
    object_type: ObjectType
    update_existing_only: bool | None
    null_values: str
    colliding_fields: str
    event_name: str | None
    event_name_property: str | None
    time_property: str | None
    product_id_property: str | None
    currency: str | None
    currency_property: str | None
    price_property: str | None
    quantity_property: str | None
    excluded: frozenset[str]
    included: frozenset[str] | None
    key_properties: tuple[str, ...]
    property_types: Mapping[str, str]
    properties_property: str | None
    deleted_property: str | None = None
    identify_property: str | None = None
    merge_behavior: str = "merge"
    subscription_group_id: str | None = None
    subscription_group_id_property: str | None = None
    subscription_state_property: str | None = None
    change_thresholds: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_config(
        cls,
        stream: str,
        schema: Mapping[str, Any],
        config: Mapping[str, Any],
        entry: Mapping[str, Any] | None = None,
        bookmark_properties: Sequence[str] = (),
        key_properties: Sequence[str] = (),
    ) -> StreamSettings:
        """Resolve the stream's settings (`config` holds defaults) and check them.

        Raises:
            ConfigError: naming the setting, where it was set, and what to do.

        """
        overrides = entry or {}

        def get(name: str) -> Any:
            value = overrides.get(name)
            return config.get(name) if value is None else value

        where = f"stream_mappings.{stream}" if entry is not None else "the target settings"
        object_type = get("object_type")
        identifier_property = get("identifier_property")
        properties: Mapping[str, Any] = schema.get("properties") or {}
        settings = {name: get(name) for name in PROPERTY_SETTINGS}
        if get("identifier_type") == "user_alias" and not get("alias_label"):
            raise ConfigError(
                f"identifier_type user_alias needs alias_label (in {where}): the label Braze "
                "stores beside each alias name, for example 'peak_customer_id'"
            )
        structural = _check_object_settings(object_type, where, get)
        property_types = _check_property_types(get("property_types"), stream, where, schema)
        # The stream's own thresholds name its properties; the top level's are defaults
        # for every attributes stream, whichever properties each has.
        own = overrides.get("change_thresholds")
        if own and object_type != "attributes":
            raise ConfigError(
                f"change_thresholds is for attributes streams (in {where}); stream "
                f"'{stream}' sends {object_type}"
            )
        thresholds = (
            _check_change_thresholds(own, stream, where, schema)
            if own is not None
            else _check_change_thresholds(
                config.get("change_thresholds"), stream, "the target settings", {}
            )
        )
        if get("deleted_property") and object_type != "attributes":
            raise ConfigError(
                f"deleted_property is for attributes streams (in {where}); stream "
                f"'{stream}' sends {object_type}"
            )
        if get("properties_property") and object_type == "attributes":
            raise ConfigError(
                f"properties_property is for events and purchases (in {where}); stream "
                f"'{stream}' sends attributes"
            )
        if properties:
            for name, prop in settings.items():
                if prop is not None and prop not in properties:
                    raise ConfigError(
                        f"stream '{stream}' has no property '{prop}' for {name} (in {where}); "
                        f"its properties are: {', '.join(sorted(properties))}"
                    )
        # The identifier and the replication key would each cost a data point per user per
        # sync for no benefit, so they are not sent as attributes unless asked for.
        excluded = get("exclude_properties")
        if excluded is None:
            excluded = [identifier_property, *bookmark_properties]
        # Singer metadata columns (_sdc_extracted_at, ...) are never sent.
        metadata = [name for name in properties if name.startswith("_sdc_")]
        include = get("include_properties")
        return cls(
            stream=stream,
            where=where,
            identifier_property=identifier_property,
            identifier_type=get("identifier_type"),
            alias_label=get("alias_label"),
            object_type=object_type,
            update_existing_only=get("update_existing_only"),
            null_values=get("null_values"),
            colliding_fields=get("colliding_fields"),
            event_name=get("event_name"),
            event_name_property=settings["event_name_property"],
            time_property=settings["time_property"],
            product_id_property=settings["product_id_property"],
            currency=get("currency"),
            currency_property=settings["currency_property"],
            price_property=settings["price_property"],
            quantity_property=settings["quantity_property"],
            excluded=frozenset({*excluded, *structural, *metadata, identifier_property}),
            included=frozenset(include) if include else None,
            key_properties=tuple(key_properties),
            property_types=property_types,
            properties_property=settings["properties_property"],
            deleted_property=settings["deleted_property"],
            identify_property=settings["identify_property"],
            merge_behavior=get("merge_behavior") or "merge",
            subscription_group_id=get("subscription_group_id"),
            subscription_group_id_property=settings["subscription_group_id_property"],
            subscription_state_property=settings["subscription_state_property"],
            change_thresholds=thresholds if object_type == "attributes" else {},
        )


def _check_change_thresholds(
    declared: Any, stream: str, where: str, schema: Mapping[str, Any]
) -> dict[str, float]:
    """`change_thresholds`, checked: numbers >= 0, for properties the stream has (or "*")."""
    if not declared:
        return {}
    properties: Mapping[str, Any] = schema.get("properties") or {}
    checked = {}
    for name, value in declared.items():
        # Numbers from a config file arrive as Decimal (singer-sdk parses them so).
        number = type(value) in (int, float, Decimal) and math.isfinite(value)
        if not number or value < 0:
            raise ConfigError(
                f"change_thresholds.{name} is {_shown(value)} (in {where}); give a number "
                "of 0 or more"
            )
        if name != "*":
            _check_named_property("change_thresholds", name, stream, where, properties, ', or "*"')
        checked[name] = float(value)
    return checked


def _check_property_types(
    declared: Any, stream: str, where: str, schema: Mapping[str, Any]
) -> dict[str, str]:
    """`property_types`, checked: known types, properties the stream has."""
    if not declared:
        return {}
    properties: Mapping[str, Any] = schema.get("properties") or {}
    for name, kind in declared.items():
        if kind not in TYPES:
            raise ConfigError(
                f"property_types.{name} is {kind!r} (in {where}); use one of: {', '.join(TYPES)}"
            )
        _check_named_property("property_types", name, stream, where, properties)
    return dict(declared)


def _check_named_property(
    setting: str,
    name: str,
    stream: str,
    where: str,
    properties: Mapping[str, Any],
    also: str = "",
) -> None:
    """A per-property setting names a property the stream has (if its schema lists any)."""
    if properties and name not in properties:
        raise ConfigError(
            f"stream '{stream}' has no property '{name}' for {setting} (in {where}); "
            f"its properties are: {', '.join(sorted(properties))}{also}"
        )


def _check_object_settings(object_type: str, where: str, get: Any) -> list[str]:
    """Check the event/purchase settings; return the properties they consume."""
    if object_type == "events":
        if not (get("event_name") or get("event_name_property")):
            raise ConfigError(
                f"object_type events needs event_name or event_name_property (in {where})"
            )
        if not get("time_property"):
            raise ConfigError(f"object_type events needs time_property (in {where})")
        return [p for p in (get("event_name_property"), get("time_property")) if p]
    if object_type == "purchases":
        required = (
            ("product_id_property", get("product_id_property")),
            ("price_property", get("price_property")),
            ("time_property", get("time_property")),
            ("currency or currency_property", get("currency") or get("currency_property")),
        )
        missing = [name for name, value in required if not value]
        if missing:
            raise ConfigError(f"object_type purchases needs {', '.join(missing)} (in {where})")
        consumed = (
            "product_id_property",
            "price_property",
            "time_property",
            "currency_property",
            "quantity_property",
        )
        return [p for p in (get(name) for name in consumed) if p]
    if object_type == "aliases":
        if not get("alias_label"):
            raise ConfigError(
                f"object_type aliases needs alias_label (in {where}): the label of every "
                "alias of the stream (identifier_property holds the alias name)"
            )
        return [p for p in (get("identify_property"),) if p]
    if object_type == "subscriptions":
        if not (get("subscription_group_id") or get("subscription_group_id_property")):
            raise ConfigError(
                "object_type subscriptions needs subscription_group_id or "
                f"subscription_group_id_property (in {where})"
            )
        if not get("subscription_state_property"):
            raise ConfigError(
                f"object_type subscriptions needs subscription_state_property (in {where})"
            )
        return [
            p
            for p in (get("subscription_group_id_property"), get("subscription_state_property"))
            if p
        ]
    return []


logger = logging.getLogger("target_braze")

MAX_EXTERNAL_ID_BYTES = 987

#: The rejection kind of a record field that would replace the identity or steer Braze.
IDENTIFIER_COLLISION = "IDENTIFIER_COLLISION"

# Keys of an attributes object that identify the user or steer Braze: a record field by one
# of these names would send the record's data to another profile, or change how Braze
# treats it. `email` and `phone` join them where they identify (`reserved_fields`).
_PRIMARY_IDENTIFIERS = frozenset({"external_id", "user_alias", "braze_id"})

_BRAZE_CONTROL_KEYS = frozenset({"_update_existing_only", "_merge_objects"})

_SECONDARY_IDENTIFIERS = frozenset({"email", "phone"})

# Property keys Braze reserves inside an event's or a purchase's `properties`.
_RESERVED_PROPERTIES = {
    "events": frozenset({"time", "event_name"}),
    "purchases": frozenset({"time", "event_name", "product_id", "price", "currency", "quantity"}),
}

# No identifier this long or shorter can exceed it in UTF-8 (4 bytes a character at most).
_SHORT_IDENTIFIER = MAX_EXTERNAL_ID_BYTES // 4

# What the attribute loop does with a value, by its Python type (see `ObjectBuilder._rule`).
_COPY, _STRING, _FLOAT, _NULL, _DATETIME, _CONVERT = "copy", "str", "float", "null", "dt", "convert"

# A property's rule: what is done with a value, by its Python type; `_SKIP`: never sent.
_SKIP: dict[type, str] = {}


class ObjectBuilder:
    """The per-stream recipe from a Singer record to a Braze object."""

    def __init__(
        self, settings: StreamSettings, schema: dict[str, Any], *, validate: bool = True
    ) -> None:
        """Prepare the per-property rules from the schema."""
        self.settings = settings
        self.stream = settings.stream
        properties: dict[str, Any] = schema.get("properties") or {}
        self._types: dict[str, tuple[type, ...]] = (
            {name: kinds for name, prop in properties.items() if (kinds := python_types(prop))}
            if validate
            else {}
        )
        declared = settings.property_types
        self._typed = TypedProperties(declared) if declared else None
        for name, kind in declared.items():  # converted before the types are checked
            if validate:
                self._types[name] = (*CONVERTERS[kind][1], type(None))
        self._datetimes = frozenset(
            name
            for name, prop in properties.items()
            if _is_datetime(prop) or declared.get(name) == "time"
        )
        self._required = frozenset(schema.get("required") or []) if validate else frozenset()
        self._rules: dict[str, dict[type, str]] = {}
        # Keys `_identify` puts in every body: not attributes, not data points.
        self._identity_keys = 1 + (settings.update_existing_only is not None)
        self._skip_nulls = settings.null_values == "skip"
        self._key_properties = settings.key_properties
        # Read once per record, so kept here rather than looked up on the settings.
        self._identifier_property = settings.identifier_property
        self._object_type = settings.object_type
        self._attributes_only = settings.object_type == "attributes"
        self._identifier_type = settings.identifier_type
        self._reserved = reserved_fields(settings.object_type, settings.identifier_type)
        self._drop_colliding = settings.colliding_fields == "drop"
        # The identity is one key (external_id, braze_id, email, phone) unless it is an
        # alias or `_update_existing_only` is set: that common body is built inline.
        self._plain_identity = (
            settings.identifier_type != "user_alias" and settings.update_existing_only is None
        )

    def build(self, record: dict[str, Any], seq: int, line: Origin) -> BrazeObject | Rejection:
        """Turn one record into a Braze object, or a rejection naming what is wrong."""
        original = record
        if self._typed is not None:  # declared property_types: the record, converted
            try:
                record = self._typed.convert(record)
            except UnsendableValue as exc:
                raw = record.get(self._identifier_property)
                return Rejection(self.stream, _id(raw), record, str(exc), line)
        raw_id = record.get(self._identifier_property)
        identifier = raw_id if type(raw_id) is str else None if raw_id is None else _id(raw_id)
        try:
            if not identifier:
                settings = self.settings
                problem = "an object or array" if isinstance(raw_id, dict | list) else "empty"
                raise UnsendableValue(
                    f"'{settings.identifier_property}' is {problem}; every Braze object needs "
                    f"an identifier ({settings.identifier_type})"
                )
            if self._required and not self._required.issubset(record):
                missing = sorted(self._required - set(record))
                raise UnsendableValue(
                    f"does not match the stream's schema: required {missing} missing"
                )
            identity = (
                {self._identifier_type: identifier}
                if self._plain_identity and len(identifier) <= _SHORT_IDENTIFIER
                else self._identify(identifier)  # checks an external_id's length
            )
            body = dict(identity)
            if self._attributes_only:
                data_points = self._attributes(record, body)
                key_values = None
            else:
                data_points = self._event_or_purchase(record, body)
                key_values = tuple(record.get(name) for name in self._key_properties) or None
                if key_values is not None:
                    _check_key_values(key_values, self._key_properties)
            # The identity is decided above, from identifier_property alone; set again last
            # (in place, so the key order is kept) so that nothing can have replaced it.
            body.update(identity)
        except _Collision as exc:
            return Rejection(
                self.stream, identifier, original, str(exc), line, IDENTIFIER_COLLISION
            )
        except UnsendableValue as exc:
            return Rejection(self.stream, identifier, original, str(exc), line)
        # Positional: for each of the run's records, keyword arguments cost measurably more.
        try:
            return BrazeObject(
                self._object_type,
                (self._identifier_type, identifier),
                body,
                data_points,
                [seq],
                [original],
                [line],
                self.stream,
                identifier,
                key_values,
            )
        except orjson.JSONEncodeError as exc:  # encoded once, here: e.g. a 65-bit integer
            return Rejection(self.stream, identifier, original, _unencodable(body, exc), line)

    def _identify(self, identifier: str) -> dict[str, Any]:
        settings = self.settings
        kind = settings.identifier_type
        if kind == "external_id":
            if len(identifier) * 4 > MAX_EXTERNAL_ID_BYTES and (
                len(identifier.encode()) > MAX_EXTERNAL_ID_BYTES
            ):
                raise UnsendableValue(
                    f"'{settings.identifier_property}' is longer than Braze's "
                    f"{MAX_EXTERNAL_ID_BYTES}-byte external_id limit"
                )
            body: dict[str, Any] = {"external_id": identifier}
        elif kind == "user_alias":
            body = {"user_alias": {"alias_name": identifier, "alias_label": settings.alias_label}}
        else:
            body = {kind: identifier}
        if settings.update_existing_only is not None:
            body["_update_existing_only"] = settings.update_existing_only
        return body

    def _rule(self, name: str) -> dict[type, str]:
        """Decide, once per property name, whether and how it is sent as an attribute.

        The rule maps each Python type the property may hold to what is done with it, so
        the hot loop decides with one lookup; a type outside it is a schema mismatch
        (with validate_records) or goes through `to_braze`. `_SKIP`: never sent.
        """
        settings = self.settings
        if (
            name in settings.excluded
            or name.startswith("_sdc_")
            or (settings.included is not None and name not in settings.included)
        ):
            self._rules[name] = _SKIP
            return _SKIP
        if name in self._reserved:
            if not self._drop_colliding:
                raise self._collision(name)
            logger.warning(
                "stream '%s': field '%s' is not sent (colliding_fields: drop): %s",
                self.stream,
                name,
                self._collision(name),
            )
            self._rules[name] = _SKIP
            return _SKIP
        if name.startswith("$"):
            raise UnsendableValue(
                f"attribute name '{name[:40]}' starts with '$', which Braze forbids"
            )
        if len(name) > MAX_STRING_LENGTH:
            raise UnsendableValue(
                f"attribute name '{name[:40]}...' is longer than {MAX_STRING_LENGTH} characters"
            )
        actions = {
            int: _COPY,
            bool: _COPY,
            float: _FLOAT,
            type(None): _NULL,
            str: _DATETIME if name in self._datetimes else _STRING,
        }
        allowed = self._types.get(name)
        if allowed is not None:
            actions = {kind: actions.get(kind, _CONVERT) for kind in allowed}
        self._rules[name] = actions
        return actions

    def _collision(self, name: str) -> _Collision:
        where = (
            "a key Braze reserves in event and purchase properties"
            if not self._attributes_only
            else "a Braze control key"
            if name in _BRAZE_CONTROL_KEYS
            else f"an identifier key (the stream identifies users by {self._identifier_type} "
            f"from '{self._identifier_property}')"
        )
        return _Collision(
            f"field '{name}' collides with {where}; rename or exclude it "
            "(exclude_properties), or set colliding_fields: drop to leave it out"
        )

    def _attributes(self, record: dict[str, Any], body: dict[str, Any]) -> int:
        # The hot loop of the target: one pass, one lookup per value, plain values copied.
        rules = self._rules
        for name, value in record.items():
            actions = rules.get(name)
            if actions is None:
                actions = self._rule(name)
            if actions is _SKIP:
                continue
            action = actions.get(type(value))
            if action is _FLOAT:
                body[name] = value if value - value == 0 else to_braze(value, name)  # finite
            elif action is _STRING:
                body[name] = value if len(value) <= MAX_STRING_LENGTH else to_braze(value, name)
            elif action is _COPY:
                body[name] = value
            elif action is _NULL:
                if not self._skip_nulls:
                    body[name] = None
            elif action is _DATETIME:
                body[name] = normalise_datetime_string(value, name)
            elif action is None and name in self._types:
                raise _type_mismatch(name, value, self._types[name])
            else:
                body[name] = to_braze(value, name)
        return len(body) - self._identity_keys

    def _value(self, name: str, value: Any, is_datetime: bool) -> Any:
        if is_datetime and type(value) is str:
            return normalise_datetime_string(value, name)
        return to_braze(value, name)

    def _event_or_purchase(self, record: dict[str, Any], body: dict[str, Any]) -> int:
        settings = self.settings
        for prop_name, prop_value in record.items():
            allowed = self._types.get(prop_name)
            if allowed is not None and type(prop_value) not in allowed:
                raise _type_mismatch(prop_name, prop_value, allowed)
        time_property = settings.time_property or ""
        time_value = record.get(time_property)
        if time_value is None:
            raise UnsendableValue(f"'{time_property}' (the {settings.object_type} time) is empty")
        body["time"] = (
            iso_utc(time_value)
            if isinstance(time_value, dt.datetime)
            else normalise_datetime_string(str(time_value), time_property)
        )
        if settings.object_type == "events":
            name = settings.event_name or record.get(settings.event_name_property or "")
            if not name:
                raise UnsendableValue(f"'{settings.event_name_property}' (the event name) is empty")
            body["name"] = to_braze(str(name), settings.event_name_property or "event_name")
        else:
            self._purchase_fields(record, body)
        if settings.properties_property:
            given = self._properties_object(record, settings.properties_property)
            if given:
                body["properties"] = given
            return 1 + len(given)
        properties: dict[str, Any] = {}
        for name, value in record.items():
            if name in settings.excluded or value is None or name.startswith("_sdc_"):
                continue
            if settings.included is not None and name not in settings.included:
                continue
            if name in self._reserved:
                rule = self._rules.get(name)
                if (rule if rule is not None else self._rule(name)) is _SKIP:
                    continue  # colliding_fields: drop (`_rule` rejects unless dropping)
            properties[name] = self._value(name, value, name in self._datetimes)
        if properties:
            body["properties"] = properties
        return 1 + len(properties)

    def _properties_object(self, record: dict[str, Any], name: str) -> dict[str, Any]:
        """`properties_property`: the event's properties are that property's JSON object."""
        value = record.get(name)
        if value is None or value == "":
            return {}
        if isinstance(value, str):
            try:
                value = orjson.loads(value)
            except orjson.JSONDecodeError:
                raise UnsendableValue(f"'{name}' (properties_property) is not valid JSON") from None
        if not isinstance(value, dict):
            raise UnsendableValue(f"'{name}' (properties_property) is not a JSON object")
        properties = {}
        for key, item in value.items():
            if key in self._reserved:
                raise self._collision(key)
            properties[str(key)] = to_braze(item, f"{name}.{key}")
        return properties

    def _purchase_fields(self, record: dict[str, Any], body: dict[str, Any]) -> None:
        settings = self.settings
        product = record.get(settings.product_id_property or "")
        if product is None or product == "":
            raise UnsendableValue(f"'{settings.product_id_property}' (the product id) is empty")
        body["product_id"] = to_braze(str(product), settings.product_id_property or "product_id")
        currency = settings.currency or record.get(settings.currency_property or "")
        if not isinstance(currency, str) or len(currency) != 3 or not currency.isalpha():
            raise UnsendableValue(
                f"currency {currency!r} is not an ISO 4217 code such as 'USD' "
                f"(from {settings.currency_property or 'the currency setting'})"
            )
        body["currency"] = currency.upper()
        price = record.get(settings.price_property or "")
        if price is None:
            raise UnsendableValue(f"'{settings.price_property}' (the price) is empty")
        body["price"] = to_braze(price, settings.price_property or "price")
        if isinstance(body["price"], bool) or not isinstance(body["price"], int | float):
            raise UnsendableValue(f"'{settings.price_property}' (the price) is not a number")
        if settings.quantity_property:
            quantity = record.get(settings.quantity_property)
            if quantity is not None:
                quantity = to_braze(quantity, settings.quantity_property)
                if not isinstance(quantity, int) or not 1 <= quantity <= 100:
                    raise UnsendableValue(
                        f"'{settings.quantity_property}' is {quantity!r}; Braze takes a whole "
                        "quantity from 1 to 100"
                    )
                body["quantity"] = quantity


def reserved_fields(object_type: str, identifier_type: str) -> frozenset[str]:
    """Record fields that would collide with the identity, a control key or a reserved key.

    For attributes, a field is a key of the object itself, so the identifiers and the
    control keys are reserved (email and phone too when they identify: Braze looks a user
    up by them when no primary identifier is present). For events and purchases, fields go
    into `properties`, where Braze reserves its own keys.
    """
    if object_type == "attributes":
        secondary = (
            _SECONDARY_IDENTIFIERS if identifier_type in _SECONDARY_IDENTIFIERS else frozenset()
        )
        return _PRIMARY_IDENTIFIERS | _BRAZE_CONTROL_KEYS | secondary
    return _RESERVED_PROPERTIES.get(object_type, frozenset())


def _is_datetime(prop: dict[str, Any]) -> bool:
    if prop.get("format") == "date-time":
        return True
    return any(_is_datetime(option) for option in prop.get("anyOf", []) if isinstance(option, dict))


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float, Decimal),
    "boolean": (bool,),
    "null": (type(None),),
    "object": (dict,),
    "array": (list,),
}


def python_types(prop: dict[str, Any]) -> tuple[type, ...]:
    """The Python types a JSON Schema property admits; empty when it admits anything."""
    options = prop.get("anyOf") or prop.get("oneOf")
    if options:
        found: list[type] = []
        for option in options:
            option_types = python_types(option) if isinstance(option, dict) else ()
            if not option_types:
                return ()
            found.extend(option_types)
        return tuple(dict.fromkeys(found))
    declared = prop.get("type")
    if declared is None:
        return ()
    names = [declared] if isinstance(declared, str) else list(declared)
    if any(name not in _JSON_TYPES for name in names):
        return ()
    return tuple(dict.fromkeys(kind for name in names for kind in _JSON_TYPES[name]))


def _id(value: Any) -> str | None:
    """A non-string identifier as text; an object or array is not an identifier."""
    return None if isinstance(value, dict | list) else str(value)


def _check_key_values(values: tuple[Any, ...], names: tuple[str, ...]) -> None:
    """The event's identity (its key properties) must be JSON the ledger can digest."""
    try:
        orjson.dumps(values)
    except orjson.JSONEncodeError as exc:
        raise UnsendableValue(
            f"the key properties {list(names)} cannot be read as JSON ({exc}); Braze takes "
            "64-bit integers"
        ) from None


def _unencodable(body: dict[str, Any], exc: orjson.JSONEncodeError) -> str:
    """The reason for a body JSON cannot carry, naming the first value at fault."""
    for name, value in body.items():
        try:
            orjson.dumps(value)
        except orjson.JSONEncodeError:
            return f"'{name}' cannot be sent as JSON ({exc}); Braze takes 64-bit integers"
    return f"the object cannot be sent as JSON ({exc})"


class _Collision(UnsendableValue):
    """A record field that collides with the identity, a control key or a reserved key."""


def _type_mismatch(name: str, value: Any, allowed: tuple[type, ...]) -> UnsendableValue:
    expected = sorted({json for json, kinds in _JSON_TYPES.items() if set(kinds) <= set(allowed)})
    return UnsendableValue(
        f"does not match the stream's schema: '{name}' is {_json_type(value)} "
        f"{str(value)[:40]!r}, the schema says {' or '.join(expected)}"
    )


def _json_type(value: Any) -> str:
    for json, kinds in _JSON_TYPES.items():
        if type(value) in kinds:
            return json
    return type(value).__name__
