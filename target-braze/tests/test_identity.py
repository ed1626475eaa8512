"""A record's data reaches only the profile its identifier_property names."""

from __future__ import annotations

import pytest
from braze_target_harness import read_jsonl, run_target, schema_message, state, target_config

PROPERTIES = {
    "customer_id": {"type": "string"},
    "external_id": {"type": "string"},
    "plan": {"type": "string"},
}


def alice_as_bob(**extra: object) -> list[dict]:
    record = {"customer_id": "alice", "external_id": "bob", "plan": "gold", **extra}
    return [
        schema_message(properties=PROPERTIES, bookmark=None),
        {"type": "RECORD", "stream": "customer_attributes", "record": record},
        {
            "type": "RECORD",
            "stream": "customer_attributes",
            "record": {"customer_id": "carol", "plan": "silver"},
        },
        state("after"),
    ]


def test_a_field_named_external_id_never_reaches_another_profile(braze, tmp_path):
    config = target_config(braze, tmp_path, max_rejected_ratio=1)
    run = run_target(config, alice_as_bob(), tmp_path)
    assert run.returncode == 0, run.stderr
    assert braze.profile("bob") is None
    assert braze.profile("alice") is None  # rejected, not sent at all
    assert braze.profile("carol")["custom_attributes"] == {"plan": "silver"}
    [reject] = read_jsonl(tmp_path / "rejects.jsonl")
    assert reject["error_type"] == "IDENTIFIER_COLLISION"
    assert reject["identifier"] == "alice"
    assert "field 'external_id'" in reject["reason"]


@pytest.mark.parametrize("field", ["_update_existing_only", "_merge_objects", "braze_id"])
def test_a_field_named_like_a_braze_control_key_is_rejected_naming_it(braze, tmp_path, field):
    config = target_config(braze, tmp_path, max_rejected_ratio=1)
    properties = {**PROPERTIES, field: {}}
    messages = [
        schema_message(properties=properties, bookmark=None),
        {
            "type": "RECORD",
            "stream": "customer_attributes",
            "record": {"customer_id": "alice", "plan": "gold", field: True},
        },
    ]
    run = run_target(config, messages, tmp_path)
    assert run.returncode == 0, run.stderr
    assert braze.profile("alice") is None
    [reject] = read_jsonl(tmp_path / "rejects.jsonl")
    assert reject["error_type"] == "IDENTIFIER_COLLISION"
    assert f"field '{field}'" in reject["reason"]


def test_colliding_fields_drop_sends_the_record_to_its_own_profile_only(braze, tmp_path):
    config = target_config(braze, tmp_path, colliding_fields="drop")
    run = run_target(config, alice_as_bob(), tmp_path)
    assert run.returncode == 0, run.stderr
    assert braze.profile("bob") is None
    assert braze.profile("alice")["custom_attributes"] == {"plan": "gold"}
    assert read_jsonl(tmp_path / "rejects.jsonl") == []
    assert "field 'external_id' is not sent (colliding_fields: drop)" in run.stderr
    assert run.states[-1]["bookmarks"]["customer_attributes"]["replication_key_value"] == "after"


def test_email_identifies_so_a_phone_field_cannot_redirect_the_lookup(braze, tmp_path):
    config = target_config(
        braze, tmp_path, identifier_type="email", max_rejected_ratio=1, update_existing_only=False
    )
    properties = {"customer_id": {"type": "string"}, "phone": {"type": "string"}}
    record = {"customer_id": "alice@example.com", "phone": "+15550100"}
    messages = [
        schema_message(properties=properties, bookmark=None),
        {"type": "RECORD", "stream": "customer_attributes", "record": record},
    ]
    run = run_target(config, messages, tmp_path)
    assert run.returncode == 0, run.stderr
    [reject] = read_jsonl(tmp_path / "rejects.jsonl")
    assert reject["error_type"] == "IDENTIFIER_COLLISION"
    assert "field 'phone'" in reject["reason"]


def test_an_event_property_named_like_a_reserved_key_is_rejected(braze, tmp_path):
    config = target_config(
        braze,
        tmp_path,
        object_type="events",
        event_name="plan_changed",
        time_property="happened_at",
        max_rejected_ratio=1,
    )
    properties = {
        "customer_id": {"type": "string"},
        "happened_at": {"type": "string", "format": "date-time"},
        "time": {"type": "string"},
    }
    record = {"customer_id": "alice", "happened_at": "2026-11-28T06:00:00+00:00", "time": "x"}
    messages = [
        schema_message(properties=properties, bookmark=None),
        {"type": "RECORD", "stream": "customer_attributes", "record": record},
    ]
    run = run_target(config, messages, tmp_path)
    assert run.returncode == 0, run.stderr
    assert braze.events("alice") == []
    [reject] = read_jsonl(tmp_path / "rejects.jsonl")
    assert reject["error_type"] == "IDENTIFIER_COLLISION"
    assert "field 'time'" in reject["reason"]
