"""Unit tests: user-data records become objects or rejections; requests are shaped as Braze asks."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from target_braze.build import ObjectBuilder, StreamSettings
from target_braze.errors import ConfigError
from target_braze.objects import BrazeObject, Rejection
from target_braze.settings import apply_defaults
from target_braze.user_data import (
    DeletingBuilder,
    UserDataBatch,
    UserDataBuilder,
    _array_body,
    _subscriptions_body,
)

PROPS = {
    name: {"type": ["string", "null"]}
    for name in ("customer_id", "external_id", "group", "state", "_sdc_deleted_at", "plan")
}


def settings(**entry: Any) -> StreamSettings:
    schema = {"properties": PROPS}
    return StreamSettings.from_config("s", schema, apply_defaults({}), entry)


def build(entry: dict[str, Any], **record: Any) -> BrazeObject | Rejection:
    return UserDataBuilder(settings(**entry)).build(record, 1, 1)


ALIASES = {"object_type": "aliases", "alias_label": "crm", "identify_property": "external_id"}
SUBS = {
    "object_type": "subscriptions",
    "subscription_group_id": "g1",
    "subscription_state_property": "state",
}


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"object_type": "aliases"}, "object_type aliases needs alias_label (in stream_mappings"),
        (
            {"object_type": "subscriptions", "subscription_state_property": "state"},
            "object_type subscriptions needs subscription_group_id or "
            "subscription_group_id_property (in stream_mappings.s)",
        ),
        (
            {"object_type": "subscriptions", "subscription_group_id": "g"},
            "object_type subscriptions needs subscription_state_property",
        ),
        (
            {"object_type": "events", "event_name": "e", "time_property": "plan",
             "deleted_property": "_sdc_deleted_at"},
            "deleted_property is for attributes streams (in stream_mappings.s); stream 's' "
            "sends events",
        ),
        ({**SUBS, "subscription_state_property": "status"}, "stream 's' has no property 'status'"),
    ],
)  # fmt: skip
def test_a_setting_missing_or_misplaced_is_one_line_naming_it(entry, problem):
    with pytest.raises(ConfigError) as raised:
        settings(**entry)
    assert str(raised.value).startswith(problem)
    assert "\n" not in str(raised.value)


def test_an_alias_without_identify_value_creates_it_and_with_one_identifies_it():
    created = build(ALIASES, customer_id="n1", external_id="")
    assert isinstance(created, BrazeObject)
    assert (created.array, created.data_points) == ("aliases", 0)
    assert orjson.loads(created.encoded) == {"alias_name": "n1", "alias_label": "crm"}
    identify = build(ALIASES, customer_id="n1", external_id="e1")
    assert isinstance(identify, BrazeObject)
    assert identify.array == "identify"
    assert orjson.loads(identify.encoded) == {
        "external_id": "e1",
        "user_alias": {"alias_name": "n1", "alias_label": "crm"},
    }


def test_an_identify_into_an_over_long_external_id_is_rejected():
    rejected = build(ALIASES, customer_id="n1", external_id="é" * 500)
    assert isinstance(rejected, Rejection)
    assert "987-byte" in rejected.reason


def test_a_subscription_state_is_normalised_and_checked_before_sending():
    ok = build(SUBS, customer_id="u1", state=" Unsubscribed ")
    assert isinstance(ok, BrazeObject)
    assert ok.body == {"group": "g1", "state": "unsubscribed"}
    bad = build(SUBS, customer_id="u1", state="yes")
    assert isinstance(bad, Rejection)
    assert bad.kind == "INVALID_SUBSCRIPTION_STATE"
    assert bad.reason == "'state' is 'yes'; Braze takes subscribed or unsubscribed"


def test_a_record_without_identifier_is_rejected_naming_the_property():
    rejected = build({"object_type": "deletes"}, customer_id="")
    assert isinstance(rejected, Rejection)
    assert rejected.reason.startswith("'customer_id' is empty")


def test_a_delete_by_alias_is_a_user_alias_object():
    entry = {"object_type": "deletes", "identifier_type": "user_alias", "alias_label": "crm"}
    deleted = build(entry, customer_id="n1")
    assert isinstance(deleted, BrazeObject)
    assert orjson.loads(deleted.encoded) == {"alias_name": "n1", "alias_label": "crm"}


def test_deleted_property_routes_only_marked_records_to_deletes():
    stream = settings(deleted_property="_sdc_deleted_at")
    builder = DeletingBuilder(stream, ObjectBuilder(stream, {"properties": PROPS}))
    kept = builder.build({"customer_id": "u1", "plan": "pro", "_sdc_deleted_at": None}, 1, 1)
    gone = builder.build({"customer_id": "u2", "_sdc_deleted_at": "2026-12-01T00:00:00Z"}, 2, 2)
    assert isinstance(kept, BrazeObject)
    assert isinstance(gone, BrazeObject)
    assert (kept.array, kept.body) == ("attributes", {"external_id": "u1", "plan": "pro"})
    assert (gone.array, orjson.loads(gone.encoded)) == ("deletes", "u2")


def _objects(entry: dict[str, Any], records: list[dict[str, Any]]) -> list[BrazeObject]:
    built = [build(entry, **record) for record in records]
    assert all(isinstance(obj, BrazeObject) for obj in built)
    return built  # type: ignore[return-value]


def test_request_bodies_are_braze_shapes():
    deletes = _objects({"object_type": "deletes"}, [{"customer_id": "a"}, {"customer_id": "b"}])
    body = UserDataBatch(_array_body("external_ids"), deletes).body()
    assert orjson.loads(body) == {"external_ids": ["a", "b"]}
    identify = _objects(ALIASES, [{"customer_id": "n1", "external_id": "e1"}])
    render = _array_body("aliases_to_identify", b',"merge_behavior":"none"')
    assert orjson.loads(UserDataBatch(render, identify).body()) == {
        "aliases_to_identify": [
            {"external_id": "e1", "user_alias": {"alias_name": "n1", "alias_label": "crm"}}
        ],
        "merge_behavior": "none",
    }
    subs = _objects(
        {**SUBS, "subscription_group_id": None, "subscription_group_id_property": "group"},
        [
            {"customer_id": "a", "group": "g1", "state": "subscribed"},
            {"customer_id": "b", "group": "g1", "state": "subscribed"},
            {"customer_id": "a", "group": "g2", "state": "unsubscribed"},
        ],
    )
    assert orjson.loads(_subscriptions_body(subs)) == {
        "subscription_groups": [
            {"subscription_group_id": "g1", "subscription_state": "subscribed",
             "external_ids": ["a", "b"]},
            {"subscription_group_id": "g2", "subscription_state": "unsubscribed",
             "external_ids": ["a"]},
        ]
    }  # fmt: skip


def test_a_user_data_batch_splits_in_halves_and_maps_an_error_index_to_its_object():
    deletes = _objects({"object_type": "deletes"}, [{"customer_id": c} for c in "abcde"])
    batch = UserDataBatch(_array_body("external_ids"), deletes)
    assert [len(half) for half in batch.halves()] == [2, 3]
    assert batch.index_of("external_ids", 3) is deletes[3]
    assert batch.index_of("external_ids", 5) is None
    assert all(obj.resend_safe for obj in deletes)
