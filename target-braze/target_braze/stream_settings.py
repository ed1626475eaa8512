"""Per-stream settings: the top-level defaults, overridden by `stream_mappings.<stream>`.

Resolved once per stream, when its SCHEMA arrives, and checked against that schema: a
setting naming a property the stream does not have fails there, before any request for
the stream, with the properties that do exist.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from target_braze.errors import ConfigError
from target_braze.objects import ObjectType
from target_braze.property_types import TYPES
from target_braze.settings import MAPPING_SETTINGS

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
        )


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
        if properties and name not in properties:
            raise ConfigError(
                f"stream '{stream}' has no property '{name}' for property_types (in {where}); "
                f"its properties are: {', '.join(sorted(properties))}"
            )
    return dict(declared)


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
