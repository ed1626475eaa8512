"""ObjectBuilder and StreamSettings: records to Braze objects, with the stream's settings."""

import pytest
from braze_target_harness import builder_for
from target_braze.errors import ConfigError
from target_braze.objects import BrazeObject, Rejection

SCHEMA = {
    "properties": {
        "customer_id": {"type": "string"},
        "updated_at": {"type": "string", "format": "date-time"},
        "peak_churn_probability": {"type": ["number", "null"]},
        "peak_segment": {"type": ["string", "null"]},
        "last_seen": {"type": ["string", "null"], "format": "date-time"},
    }
}


def build(record, schema=SCHEMA, bookmarks=("updated_at",), **config):
    return builder_for(schema, tuple(bookmarks), **config).build(record, 0, 1)


def test_identifier_and_replication_key_are_not_sent_as_attributes():
    obj = build(
        {"customer_id": "c1", "updated_at": "2026-01-01T00:00:00+00:00", "peak_segment": "loyal"}
    )
    assert isinstance(obj, BrazeObject)
    assert obj.body == {"external_id": "c1", "peak_segment": "loyal"}
    assert obj.data_points == 1


def test_null_removes_by_default_and_skip_leaves_it_out():
    record = {"customer_id": "c1", "peak_segment": None}
    assert build(record).body == {"external_id": "c1", "peak_segment": None}
    assert build(record, null_values="skip").body == {"external_id": "c1"}


def test_datetime_properties_are_normalised_to_utc():
    obj = build({"customer_id": "c1", "last_seen": "2026-01-01T07:00:00+02:00"})
    assert obj.body["last_seen"] == "2026-01-01T05:00:00+00:00"


def test_user_alias_identifier_carries_label_and_update_existing_only():
    obj = build(
        {"customer_id": "c1"},
        identifier_type="user_alias",
        alias_label="peak",
        update_existing_only=True,
    )
    assert obj.body == {
        "user_alias": {"alias_name": "c1", "alias_label": "peak"},
        "_update_existing_only": True,
    }


def test_missing_identifier_is_rejected_with_reason():
    rejection = build({"customer_id": None, "peak_segment": "x"})
    assert isinstance(rejection, Rejection)
    assert "'customer_id' is empty" in rejection.reason


def test_external_id_over_987_bytes_is_rejected():
    rejection = build({"customer_id": "é" * 494})
    assert isinstance(rejection, Rejection)
    assert "987-byte" in rejection.reason


def test_attribute_name_starting_with_dollar_is_rejected():
    rejection = build({"customer_id": "c1", "$bad": 1}, schema={"properties": {}})
    assert isinstance(rejection, Rejection)
    assert "'$bad'" in rejection.reason


def test_per_stream_mapping_overrides_the_defaults():
    builder = builder_for(SCHEMA, stream_mappings={"s": {"exclude_properties": ["peak_segment"]}})
    obj = builder.build(
        {"customer_id": "c1", "updated_at": "2026-01-01T00:00:00Z", "peak_segment": "x"}, 0, 1
    )
    assert obj.body == {"external_id": "c1", "updated_at": "2026-01-01T00:00:00+00:00"}


def test_unknown_identifier_property_names_the_setting_and_the_choices():
    with pytest.raises(ConfigError, match=r"identifier_property.*customer_id, last_seen"):
        builder_for(SCHEMA, identifier_property="nope")


def test_events_take_name_time_and_properties():
    schema = {
        "properties": {
            "user": {"type": "string"},
            "kind": {"type": "string"},
            "at": {"type": "string", "format": "date-time"},
            "amount": {"type": "number"},
        }
    }
    obj = build(
        {"user": "u1", "kind": "login", "at": "2026-01-01T00:00:00Z", "amount": 3},
        schema=schema,
        bookmarks=(),
        identifier_property="user",
        object_type="events",
        event_name_property="kind",
        time_property="at",
    )
    assert obj.array == "events"
    assert obj.body == {
        "external_id": "u1",
        "time": "2026-01-01T00:00:00+00:00",
        "name": "login",
        "properties": {"amount": 3},
    }
    assert obj.data_points == 2


def test_events_without_a_name_setting_are_a_config_error():
    with pytest.raises(ConfigError, match="event_name or event_name_property"):
        builder_for(SCHEMA, object_type="events", time_property="updated_at")


def test_purchases_check_currency_and_quantity():
    schema = {
        "properties": {
            "user": {"type": "string"},
            "sku": {"type": "string"},
            "price": {"type": "number"},
            "qty": {"type": "integer"},
            "at": {"type": "string"},
        }
    }
    config = dict(
        identifier_property="user",
        object_type="purchases",
        product_id_property="sku",
        price_property="price",
        time_property="at",
        currency="usd",
        quantity_property="qty",
    )
    ok = build(
        {"user": "u", "sku": "p1", "price": 9.5, "qty": 2, "at": "2026-01-01T00:00:00Z"},
        schema=schema,
        bookmarks=(),
        **config,
    )
    assert ok.body == {
        "external_id": "u",
        "time": "2026-01-01T00:00:00+00:00",
        "product_id": "p1",
        "currency": "USD",
        "price": 9.5,
        "quantity": 2,
    }
    too_many = build(
        {"user": "u", "sku": "p1", "price": 1, "qty": 101, "at": "2026-01-01T00:00:00Z"},
        schema=schema,
        bookmarks=(),
        **config,
    )
    assert isinstance(too_many, Rejection)
    assert "1 to 100" in too_many.reason


def test_merge_is_last_value_wins_and_counts_data_points_once():
    builder = builder_for(SCHEMA, ("updated_at",))
    first = builder.build(
        {"customer_id": "c1", "peak_segment": "a", "peak_churn_probability": 0.1}, 0, 1
    )
    second = builder.build({"customer_id": "c1", "peak_segment": "b"}, 1, 2)
    first.merge(second)
    assert first.body == {"external_id": "c1", "peak_segment": "b", "peak_churn_probability": 0.1}
    assert first.data_points == 2
    assert first.seqs == [0, 1]


@pytest.mark.parametrize(
    "setting",
    ["time_property", "event_name_property"],
)
def test_event_property_settings_are_checked_against_the_schema(setting):
    config = {"object_type": "events", "event_name_property": "kind", "time_property": "at"}
    config[setting] = "nope"
    schema = {"properties": {"customer_id": {}, "kind": {}, "at": {}}}
    with pytest.raises(ConfigError, match=rf"no property 'nope' for {setting}.*at, customer_id"):
        builder_for(schema, **config)


def test_purchase_property_settings_are_checked_against_the_schema():
    schema = {"properties": {"customer_id": {}, "sku": {}, "price": {}, "at": {}}}
    config = dict(
        object_type="purchases",
        product_id_property="sku",
        price_property="price",
        time_property="at",
        currency="EUR",
        quantity_property="qty",
    )
    with pytest.raises(ConfigError, match="no property 'qty' for quantity_property"):
        builder_for(schema, **config)
