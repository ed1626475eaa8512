"""How a stream's records become Braze user objects: one `StreamMapping` per stream.

Everything per stream is decided once, from the settings and the stream's SCHEMA message,
so the per-record work in `StreamMapping.build` is a single pass over the record.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import orjson

from target_braze.errors import ConfigError
from target_braze.values import (
    MAX_STRING_LENGTH,
    UnsendableValue,
    iso_utc,
    normalise_datetime_string,
    to_braze,
)

ObjectType = Literal["attributes", "events", "purchases"]
IDENTIFIER_TYPES = ("external_id", "user_alias", "braze_id", "email", "phone")
OBJECT_TYPES: tuple[ObjectType, ...] = ("attributes", "events", "purchases")
MAX_EXTERNAL_ID_BYTES = 987
# Keys of an object that identify the user or steer Braze; they are not billed data points.
_CONTROL_KEYS = frozenset(
    {"external_id", "user_alias", "braze_id", "_update_existing_only", "_merge_objects"}
)

# Settings that may be given at the top level (default for every stream) and per stream.
MAPPING_SETTINGS = (
    "identifier_property",
    "identifier_type",
    "alias_label",
    "object_type",
    "exclude_properties",
    "include_properties",
    "update_existing_only",
    "null_values",
    "event_name",
    "event_name_property",
    "time_property",
    "product_id_property",
    "currency",
    "currency_property",
    "price_property",
    "quantity_property",
)
MAPPING_DEFAULTS: dict[str, Any] = {
    "identifier_property": "customer_id",
    "identifier_type": "external_id",
    "object_type": "attributes",
    "null_values": "unset",
}


@dataclass(slots=True)
class BrazeObject:
    """One object of a /users/track array, with the records it carries.

    `seqs` are the checkpoint sequence numbers of the records merged into it, and
    `records` the records themselves, kept only until Braze answers so a rejection can
    be written with the record that caused it.
    """

    array: ObjectType
    user_key: tuple[str, str]
    body: dict[str, Any]
    data_points: int
    seqs: list[int]
    records: list[dict[str, Any]]
    stream: str
    identifier: str
    _encoded: bytes | None = field(default=None, repr=False)

    def encoded(self) -> bytes:
        """The object's JSON, cached: it is both the size estimate and the request's bytes."""
        if self._encoded is None:
            self._encoded = orjson.dumps(self.body)
        return self._encoded

    def merge(self, later: BrazeObject) -> None:
        """Fold a later record for the same user into this attributes object (last wins)."""
        self.body.update(later.body)
        self.data_points = count_data_points(self.body)
        self.seqs.extend(later.seqs)
        self.records.extend(later.records)
        self._encoded = None


@dataclass(slots=True)
class Rejection:
    """A record that cannot be sent, and why."""

    stream: str
    identifier: str | None
    record: dict[str, Any]
    reason: str


def _setting(stream_cfg: dict[str, Any], defaults: dict[str, Any], name: str) -> Any:
    if stream_cfg.get(name) is not None:
        return stream_cfg[name]
    if defaults.get(name) is not None:
        return defaults[name]
    return MAPPING_DEFAULTS.get(name)


class StreamMapping:
    """The per-stream recipe from a Singer record to a Braze object."""

    def __init__(
        self,
        stream: str,
        schema: dict[str, Any],
        config: dict[str, Any],
        bookmark_properties: list[str] | None = None,
    ) -> None:
        """Resolve the stream's settings against its schema; raise `ConfigError` if they clash."""
        per_stream = (config.get("stream_mappings") or {}).get(stream) or {}
        unknown = sorted(set(per_stream) - set(MAPPING_SETTINGS))
        if unknown:
            raise ConfigError(
                f"stream_mappings.{stream} has unknown keys {unknown}; allowed: "
                f"{', '.join(MAPPING_SETTINGS)}"
            )

        def get(name: str) -> Any:
            return _setting(per_stream, config, name)

        self.stream = stream
        self.identifier_property: str = get("identifier_property")
        self.identifier_type: str = get("identifier_type")
        self.object_type: ObjectType = get("object_type")
        self.alias_label: str | None = get("alias_label")
        self.update_existing_only: bool | None = get("update_existing_only")
        self.null_values: str = get("null_values")
        where = f"stream_mappings.{stream}" if per_stream else "the target settings"
        if self.identifier_type not in IDENTIFIER_TYPES:
            raise ConfigError(
                f"identifier_type '{self.identifier_type}' (in {where}) is not one of "
                f"{', '.join(IDENTIFIER_TYPES)}"
            )
        if self.object_type not in OBJECT_TYPES:
            raise ConfigError(
                f"object_type '{self.object_type}' (in {where}) is not one of "
                f"{', '.join(OBJECT_TYPES)}"
            )
        if self.null_values not in ("unset", "skip"):
            raise ConfigError(f"null_values '{self.null_values}' (in {where}) is not unset/skip")
        if self.identifier_type == "user_alias" and not self.alias_label:
            raise ConfigError(
                f"identifier_type user_alias needs alias_label (in {where}): the label Braze "
                "stores beside each alias name, for example 'peak_customer_id'"
            )
        properties: dict[str, Any] = schema.get("properties", {})
        if properties and self.identifier_property not in properties:
            raise ConfigError(
                f"stream '{stream}' has no property '{self.identifier_property}' to identify "
                f"users; set identifier_property (in {where}) to one of: "
                f"{', '.join(sorted(properties))}"
            )

        self.event_name: str | None = get("event_name")
        self.event_name_property: str | None = get("event_name_property")
        self.time_property: str | None = get("time_property")
        self.product_id_property: str | None = get("product_id_property")
        self.currency: str | None = get("currency")
        self.currency_property: str | None = get("currency_property")
        self.price_property: str | None = get("price_property")
        self.quantity_property: str | None = get("quantity_property")
        structural = self._check_object_settings(where)

        # The identifier and the replication key would each cost a data point per user per
        # sync for no benefit, so they are not sent as attributes unless asked for.
        excluded = get("exclude_properties")
        if excluded is None:
            excluded = [self.identifier_property, *(bookmark_properties or [])]
        self.excluded = {*excluded, *structural, self.identifier_property}
        # Singer metadata columns (_sdc_extracted_at, ...) are never user attributes.
        self.excluded.update(name for name in properties if name.startswith("_sdc_"))
        include = get("include_properties")
        self.included = frozenset(include) if include else None
        self.datetime_properties = frozenset(
            name for name, prop in properties.items() if _is_datetime(prop)
        )
        self._checked_keys: set[str] = set()
        # validate_records: each property's JSON type and the required properties are
        # checked in the same pass that builds the object (a separate JSON Schema
        # validator cost more than all of the target's other per-record work).
        validate = config.get("validate_records", True)
        self.types: dict[str, tuple[type, ...]] = (
            {name: types for name, prop in properties.items() if (types := python_types(prop))}
            if validate
            else {}
        )
        self.required = frozenset(schema.get("required", [])) if validate else frozenset()

    def _check_object_settings(self, where: str) -> list[str]:
        """Check the event/purchase settings; return the properties they consume."""
        if self.object_type == "events":
            if not (self.event_name or self.event_name_property):
                raise ConfigError(
                    f"object_type events needs event_name or event_name_property (in {where})"
                )
            if not self.time_property:
                raise ConfigError(f"object_type events needs time_property (in {where})")
            return [p for p in (self.event_name_property, self.time_property) if p]
        if self.object_type == "purchases":
            missing = [
                name
                for name, value in (
                    ("product_id_property", self.product_id_property),
                    ("price_property", self.price_property),
                    ("time_property", self.time_property),
                    ("currency or currency_property", self.currency or self.currency_property),
                )
                if not value
            ]
            if missing:
                raise ConfigError(f"object_type purchases needs {', '.join(missing)} (in {where})")
            return [
                p
                for p in (
                    self.product_id_property,
                    self.price_property,
                    self.time_property,
                    self.currency_property,
                    self.quantity_property,
                )
                if p
            ]
        return []

    def build(self, record: dict[str, Any], seq: int) -> BrazeObject | Rejection:
        """Turn one record into a Braze object, or a rejection naming what is wrong."""
        raw_id = record.get(self.identifier_property)
        identifier = None if raw_id is None else str(raw_id)
        try:
            if identifier is None or identifier == "":
                raise UnsendableValue(
                    f"'{self.identifier_property}' is empty; every Braze object needs an "
                    f"identifier ({self.identifier_type})"
                )
            if self.required and not self.required.issubset(record):
                missing = sorted(self.required - set(record))
                raise UnsendableValue(
                    f"does not match the stream's schema: required {missing} missing"
                )
            body = self._identify(identifier)
            if self.object_type == "attributes":
                data_points = self._attributes(record, body)
            else:
                data_points = self._event_or_purchase(record, body)
        except UnsendableValue as exc:
            return Rejection(self.stream, identifier, record, str(exc))
        return BrazeObject(
            array=self.object_type,
            user_key=(self.identifier_type, identifier),
            body=body,
            data_points=data_points,
            seqs=[seq],
            records=[record],
            stream=self.stream,
            identifier=identifier,
        )

    def _identify(self, identifier: str) -> dict[str, Any]:
        kind = self.identifier_type
        if kind == "external_id":
            if len(identifier.encode()) > MAX_EXTERNAL_ID_BYTES:
                raise UnsendableValue(
                    f"'{self.identifier_property}' is longer than Braze's "
                    f"{MAX_EXTERNAL_ID_BYTES}-byte external_id limit"
                )
            body: dict[str, Any] = {"external_id": identifier}
        elif kind == "user_alias":
            body = {"user_alias": {"alias_name": identifier, "alias_label": self.alias_label}}
        else:
            body = {kind: identifier}
        if self.update_existing_only is not None:
            body["_update_existing_only"] = self.update_existing_only
        return body

    def _value(self, name: str, value: Any) -> Any:
        if name in self.datetime_properties and type(value) is str:
            return normalise_datetime_string(value, name)
        return to_braze(value, name)

    def _attributes(self, record: dict[str, Any], body: dict[str, Any]) -> int:
        # The hot loop of the target: one pass, plain values copied without calls.
        points = 0
        skip_nulls = self.null_values == "skip"
        excluded = self.excluded
        included = self.included
        checked = self._checked_keys
        datetimes = self.datetime_properties
        types = self.types
        for name, value in record.items():
            if name in excluded or (included is not None and name not in included):
                continue
            if name not in checked and not self._admit_key(name):
                continue
            kind = type(value)
            allowed = types.get(name)
            if allowed is not None and kind not in allowed:
                raise _type_mismatch(name, value, allowed)
            if value is None:
                if skip_nulls:
                    continue
                body[name] = None
            elif (
                kind is bool
                or kind is int
                or (kind is str and len(value) <= MAX_STRING_LENGTH and name not in datetimes)
                or (kind is float and value - value == 0)  # finite
            ):
                body[name] = value
            else:
                body[name] = self._value(name, value)
            points += 1
        return points

    def _admit_key(self, name: str) -> bool:
        """Check a property name the first time it is seen; False if it is never sent."""
        if name.startswith("_sdc_"):
            self.excluded.add(name)
            return False
        if name.startswith("$"):
            raise UnsendableValue(
                f"attribute name '{name[:40]}' starts with '$', which Braze forbids"
            )
        if len(name) > MAX_STRING_LENGTH:
            raise UnsendableValue(
                f"attribute name '{name[:40]}...' is longer than {MAX_STRING_LENGTH} characters"
            )
        self._checked_keys.add(name)
        return True

    def _event_or_purchase(self, record: dict[str, Any], body: dict[str, Any]) -> int:
        for prop_name, prop_value in record.items():
            allowed = self.types.get(prop_name)
            if allowed is not None and type(prop_value) not in allowed:
                raise _type_mismatch(prop_name, prop_value, allowed)
        assert self.time_property is not None  # noqa: S101 - guaranteed by _check_object_settings
        time_value = record.get(self.time_property)
        if time_value is None:
            raise UnsendableValue(f"'{self.time_property}' (the {self.object_type} time) is empty")
        body["time"] = (
            iso_utc(time_value)
            if isinstance(time_value, dt.datetime)
            else normalise_datetime_string(str(time_value), self.time_property)
        )
        if self.object_type == "events":
            name = self.event_name or record.get(self.event_name_property or "")
            if not name:
                raise UnsendableValue(f"'{self.event_name_property}' (the event name) is empty")
            body["name"] = to_braze(str(name), self.event_name_property or "event_name")
        else:
            self._purchase_fields(record, body)
        properties: dict[str, Any] = {}
        for name, value in record.items():
            if name in self.excluded or value is None:
                continue
            if self.included is not None and name not in self.included:
                continue
            properties[name] = self._value(name, value)
        if properties:
            body["properties"] = properties
        return 1 + len(properties)

    def _purchase_fields(self, record: dict[str, Any], body: dict[str, Any]) -> None:
        product = record.get(self.product_id_property or "")
        if product is None or product == "":
            raise UnsendableValue(f"'{self.product_id_property}' (the product id) is empty")
        body["product_id"] = to_braze(str(product), self.product_id_property or "product_id")
        currency = self.currency or record.get(self.currency_property or "")
        if not isinstance(currency, str) or len(currency) != 3 or not currency.isalpha():
            raise UnsendableValue(
                f"currency {currency!r} is not an ISO 4217 code such as 'USD' "
                f"(from {self.currency_property or 'the currency setting'})"
            )
        body["currency"] = currency.upper()
        price = record.get(self.price_property or "")
        if price is None:
            raise UnsendableValue(f"'{self.price_property}' (the price) is empty")
        body["price"] = to_braze(price, self.price_property or "price")
        if isinstance(body["price"], bool) or not isinstance(body["price"], (int, float)):
            raise UnsendableValue(f"'{self.price_property}' (the price) is not a number")
        if self.quantity_property:
            quantity = record.get(self.quantity_property)
            if quantity is not None:
                quantity = to_braze(quantity, self.quantity_property)
                if not isinstance(quantity, int) or not 1 <= quantity <= 100:
                    raise UnsendableValue(
                        f"'{self.quantity_property}' is {quantity!r}; Braze takes a whole "
                        "quantity from 1 to 100"
                    )
                body["quantity"] = quantity


def _is_datetime(prop: dict[str, Any]) -> bool:
    if prop.get("format") == "date-time":
        return True
    return any(_is_datetime(option) for option in prop.get("anyOf", []) if isinstance(option, dict))


def count_data_points(body: dict[str, Any]) -> int:
    """Billable data points in an attributes object: every key but the control keys."""
    return sum(1 for key in body if key not in _CONTROL_KEYS)


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
