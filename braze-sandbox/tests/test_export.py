"""/users/export/ids answers like Braze."""

from __future__ import annotations

import requests


def test_export_returns_profile_events_and_invalid_ids(sandbox, track):
    track(
        sandbox,
        {
            "attributes": [{"external_id": "u", "first_name": "Ada", "plan": "pro"}],
            "events": [{"external_id": "u", "name": "e", "time": "2024-01-01T00:00:00Z"}] * 2,
        },
    )
    answer = sandbox.export(external_ids=["u", "ghost"])
    assert answer["message"] == "success"
    assert answer["invalid_user_ids"] == ["ghost"]
    (user,) = answer["users"]
    assert user["external_id"] == "u"
    assert user["first_name"] == "Ada"
    assert user["custom_attributes"] == {"plan": "pro"}
    assert user["custom_events"] == [
        {
            "name": "e",
            "first": "2024-01-01T00:00:00.000Z",
            "last": "2024-01-01T00:00:00.000Z",
            "count": 2,
        }
    ]


def test_export_fields_to_export_limits_fields(sandbox, track):
    track(sandbox, {"attributes": [{"external_id": "u", "first_name": "Ada", "plan": "pro"}]})
    (user,) = sandbox.export(external_ids=["u"], fields_to_export=["first_name"])["users"]
    assert user == {"first_name": "Ada"}


def test_export_by_alias(sandbox, track):
    alias = {"alias_name": "n", "alias_label": "crm"}
    track(sandbox, {"attributes": [{"user_alias": alias, "_update_existing_only": False, "x": 1}]})
    (user,) = sandbox.export(user_aliases=[alias])["users"]
    assert user["user_aliases"] == [alias]


def test_export_needs_permission(sandbox):
    response = requests.post(
        f"{sandbox.url}/users/export/ids",
        json={"external_ids": ["u"]},
        headers={"Authorization": f"Bearer {'read-nothing-key'}"},
        timeout=10,
    )
    assert response.status_code == 403
