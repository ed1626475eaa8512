"""Records of deletes, aliases and subscriptions streams become objects of Braze's user-data API.

Each object's `encoded` is its element of the endpoint's array: an identifier of
`/users/delete`, a user alias of `/users/alias/new`, an alias to identify of
`/users/identify`; a subscription is `{"group", "state"}`, packed by `user_data.py` into
the endpoint that needs fewer requests. None of them is a billed data point.
"""

from __future__ import annotations

from typing import Any

import orjson

from target_braze.builder import MAX_EXTERNAL_ID_BYTES, ObjectBuilder
from target_braze.objects import BrazeObject, Origin, Rejection
from target_braze.stream_settings import StreamSettings

#: The states /v2/subscription/status/set and /users/track's subscription_groups accept.
SUBSCRIPTION_STATES = ("subscribed", "unsubscribed")


class UserDataBuilder:
    """The per-stream recipe for deletes, aliases and subscriptions streams."""

    def __init__(self, settings: StreamSettings) -> None:
        """Nothing per property: these records carry a few named values."""
        self.settings = settings
        self.stream = settings.stream

    def build(self, record: dict[str, Any], seq: int, line: Origin) -> BrazeObject | Rejection:
        """One record as a delete, alias, identify or subscription object, or a rejection."""
        settings = self.settings
        identifier, problem = _identifier(record, settings.identifier_property)
        if problem:
            return Rejection(self.stream, identifier, record, problem, line)
        kind = settings.object_type
        if kind == "deletes":
            return delete_object(settings, identifier, record, seq, line)
        if kind == "aliases":
            return self._alias(identifier, record, seq, line)
        return self._subscription(identifier, record, seq, line)

    def _alias(self, name: str, record: dict[str, Any], seq: int, line: Origin) -> Any:
        settings = self.settings
        alias = {"alias_name": name, "alias_label": settings.alias_label}
        target = record.get(settings.identify_property or "")
        if target is None or target == "":
            user = ("user_alias", name)
            return _object("aliases", user, alias, settings, name, record, seq, line)
        external_id = str(target)
        if len(external_id.encode()) > MAX_EXTERNAL_ID_BYTES:
            return Rejection(
                self.stream,
                name,
                record,
                f"'{settings.identify_property}' is longer than Braze's "
                f"{MAX_EXTERNAL_ID_BYTES}-byte external_id limit",
                line,
            )
        element = {"external_id": external_id, "user_alias": alias}
        return _object("identify", ("user_alias", name), element, settings, name, record, seq, line)

    def _subscription(self, identifier: str, record: dict[str, Any], seq: int, line: Origin) -> Any:
        settings = self.settings
        group = settings.subscription_group_id or record.get(
            settings.subscription_group_id_property or ""
        )
        if group is None or group == "":
            return Rejection(
                self.stream,
                identifier,
                record,
                f"'{settings.subscription_group_id_property}' (the subscription group id) is empty",
                line,
            )
        state_property = settings.subscription_state_property or ""
        state = record.get(state_property)
        normal = state.strip().lower() if isinstance(state, str) else None
        if normal not in SUBSCRIPTION_STATES:
            return Rejection(
                self.stream,
                identifier,
                record,
                f"'{state_property}' is {str(state)[:40]!r}; Braze takes subscribed or "
                "unsubscribed",
                line,
                "INVALID_SUBSCRIPTION_STATE",
            )
        element = {"group": str(group), "state": normal}
        if settings.identifier_type == "user_alias":
            element["label"] = settings.alias_label or ""
        user = (settings.identifier_type, identifier)
        return _object("subscriptions", user, element, settings, identifier, record, seq, line)


class DeletingBuilder:
    """An attributes stream whose records may say the user is deleted (`deleted_property`).

    A record with that property set becomes a delete; any other is built as usual.
    """

    def __init__(self, settings: StreamSettings, attributes: ObjectBuilder) -> None:
        """Wrap the stream's attributes builder."""
        self.settings = settings
        self._attributes = attributes
        self._property = settings.deleted_property or ""

    def build(self, record: dict[str, Any], seq: int, line: Origin) -> BrazeObject | Rejection:
        """A delete when the record says so, else the attributes object."""
        marker = record.get(self._property)
        if marker is None or marker == "" or marker is False:
            return self._attributes.build(record, seq, line)
        settings = self.settings
        identifier, problem = _identifier(record, settings.identifier_property)
        if problem:
            return Rejection(settings.stream, identifier, record, problem, line)
        return delete_object(settings, identifier, record, seq, line)


def delete_object(
    settings: StreamSettings, identifier: str, record: dict[str, Any], seq: int, line: Origin
) -> BrazeObject | Rejection:
    """The user `identifier` (of the stream's identifier_type) as an element of /users/delete."""
    kind = settings.identifier_type
    if kind == "external_id" and len(identifier.encode()) > MAX_EXTERNAL_ID_BYTES:
        return Rejection(
            settings.stream,
            identifier,
            record,
            f"'{settings.identifier_property}' is longer than Braze's "
            f"{MAX_EXTERNAL_ID_BYTES}-byte external_id limit",
            line,
        )
    element: Any = (
        {"alias_name": identifier, "alias_label": settings.alias_label}
        if kind == "user_alias"
        else identifier
    )
    return _object("deletes", (kind, identifier), element, settings, identifier, record, seq, line)


def _identifier(record: dict[str, Any], name: str) -> tuple[str, str]:
    """The record's identifier as text, and a problem ('' when none)."""
    raw = record.get(name)
    if raw is None or raw == "" or isinstance(raw, dict | list):
        return "", f"'{name}' is empty; every user-data record names a user"
    return str(raw), ""


def _object(
    array: Any,
    user: tuple[str, str],
    element: Any,
    settings: StreamSettings,
    identifier: str,
    record: dict[str, Any],
    seq: int,
    line: Origin,
) -> BrazeObject:
    return BrazeObject(
        array,
        user,
        element if isinstance(element, dict) else {"id": element},
        0,  # deletes, aliases and subscription states are not billed data points
        [seq],
        [record],
        [line],
        settings.stream,
        identifier,
        encoded=orjson.dumps(element),
    )
