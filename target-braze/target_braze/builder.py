"""`ObjectBuilder`: one stream's records turned into Braze objects, or rejections with reasons.

Everything per stream is decided once, from its `StreamSettings` and SCHEMA; per property
name a rule is decided the first time the name is seen. The per-record work is one pass
over the record. With `validate_records`, each value's JSON type and the required
properties are checked in that same pass (a separate JSON Schema validator cost more than
all of the target's other per-record work); an invalid record is rejected with a reason
instead of ending the run.
"""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal
from typing import Any

import orjson

from target_braze.objects import BrazeObject, Origin, Rejection
from target_braze.property_types import CONVERTERS, TypedProperties
from target_braze.stream_settings import StreamSettings
from target_braze.values import (
    MAX_STRING_LENGTH,
    UnsendableValue,
    iso_utc,
    normalise_datetime_string,
    to_braze,
)

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
