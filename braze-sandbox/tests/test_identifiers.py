"""Identifier rules, per object: the rest of the request is still applied."""

from __future__ import annotations


def errors_of(response):
    assert response.status_code == 201
    return response.json().get("errors", [])


def test_two_primary_identifiers_reject_only_that_object(sandbox, track):
    body = {
        "attributes": [
            {"external_id": "a", "x": 1},
            {"external_id": "b", "braze_id": "123", "x": 2},
        ]
    }
    response = track(sandbox, body)
    assert errors_of(response) == [
        {"type": "MULTIPLE_PRIMARY_IDENTIFIERS", "input_array": "attributes", "index": 1}
    ]
    assert response.json()["attributes_processed"] == 1
    assert sandbox.profile("a") is not None
    assert sandbox.profile("b") is None


def test_external_id_over_987_bytes_is_rejected(sandbox, track):
    response = track(sandbox, {"attributes": [{"external_id": "é" * 494, "x": 1}]})
    assert errors_of(response)[0]["type"] == "EXTERNAL_USER_ID_TOO_LARGE"
    assert sandbox.profiles() == []


def test_object_without_identifier_is_rejected(sandbox, track):
    response = track(sandbox, {"attributes": [{"x": 1}]})
    assert errors_of(response)[0]["index"] == 0
    assert sandbox.profiles() == []


def test_email_identifies_when_no_primary(sandbox, track):
    track(sandbox, {"attributes": [{"external_id": "a", "email": "a@example.com"}]})
    track(sandbox, {"attributes": [{"email": "a@example.com", "phone": "+1555", "plan": "pro"}]})
    assert sandbox.profile("a")["custom_attributes"] == {"plan": "pro"}
    assert len(sandbox.profiles()) == 1


def test_alias_defaults_to_update_existing_only(sandbox, track):
    alias = {"alias_name": "n1", "alias_label": "crm"}
    track(sandbox, {"attributes": [{"user_alias": alias, "x": 1}]})
    assert sandbox.profiles() == []
    track(sandbox, {"attributes": [{"user_alias": alias, "x": 1, "_update_existing_only": False}]})
    (profile,) = sandbox.profiles()
    assert profile["user_aliases"] == [alias]


def test_external_id_with_update_existing_only_does_not_create(sandbox, track):
    track(sandbox, {"attributes": [{"external_id": "a", "x": 1, "_update_existing_only": True}]})
    assert sandbox.profiles() == []


def test_chosen_error_for_chosen_id_skips_only_that_object(sandbox, track):
    body = {"attributes": [{"external_id": "cust-7", "x": 1}, {"external_id": "cust-8", "x": 1}]}
    response = track(sandbox, body)
    assert errors_of(response) == [
        {"type": "BLACKLISTED_EXTERNAL_USER_ID", "input_array": "attributes", "index": 0}
    ]
    assert sandbox.profile("cust-7") is None
    assert sandbox.profile("cust-8") is not None
