"""Attribute semantics as applied to stored profiles."""

from __future__ import annotations

import pytest


@pytest.fixture
def send(sandbox, track):
    """``send(sandbox, **attributes)`` for user ``u``; asserts a clean 201."""

    def post(target, **attributes):
        response = track(target, {"attributes": [{"external_id": "u", **attributes}]})
        assert response.status_code == 201
        assert "errors" not in response.json(), response.json()

    return post


def test_values_are_set_as_custom_attributes(sandbox, custom, send):
    send(sandbox, plan="pro", score=2.5, active=True, seen="2024-01-01T00:00:00Z")
    assert custom(sandbox, "u") == {
        "plan": "pro",
        "score": 2.5,
        "active": True,
        "seen": "2024-01-01T00:00:00Z",
    }


def test_null_removes_attribute(sandbox, custom, send):
    send(sandbox, plan="pro", score=1)
    send(sandbox, plan=None)
    assert custom(sandbox, "u") == {"score": 1}


def test_inc_increments_integer(sandbox, custom, send):
    send(sandbox, visits={"inc": 2})
    send(sandbox, visits={"inc": 3})
    assert custom(sandbox, "u") == {"visits": 5}


def test_string_array_list_replaces_and_add_remove_edit(sandbox, custom, send):
    send(sandbox, tags=["a", "b"])
    send(sandbox, tags={"add": ["c"], "remove": ["a"]})
    assert custom(sandbox, "u")["tags"] == ["b", "c"]
    send(sandbox, tags=["z"])
    assert custom(sandbox, "u")["tags"] == ["z"]


def test_string_array_keeps_newest_25(sandbox, custom, send):
    send(sandbox, tags=[str(i) for i in range(20)])
    send(sandbox, tags={"add": [str(i) for i in range(20, 30)]})
    assert custom(sandbox, "u")["tags"] == [str(i) for i in range(5, 30)]


def test_nested_object_replaces(sandbox, custom, send):
    send(sandbox, pet={"name": "Rex", "age": 3})
    send(sandbox, pet={"name": "Tom"})
    assert custom(sandbox, "u")["pet"] == {"name": "Tom"}


def test_nested_object_merges_with_merge_objects(sandbox, custom, send):
    send(sandbox, pet={"name": "Rex", "vet": {"city": "Oslo", "phone": "1"}})
    send(sandbox, pet={"age": 3, "vet": {"phone": None}}, _merge_objects=True)
    assert custom(sandbox, "u")["pet"] == {"name": "Rex", "age": 3, "vet": {"city": "Oslo"}}


def test_time_inside_nested_object_is_normalised_to_utc(sandbox, custom, send):
    send(sandbox, pet={"born": {"$time": "2020-05-01T12:00:00+02:00"}})
    assert custom(sandbox, "u")["pet"] == {"born": {"$time": "2020-05-01T10:00:00.000Z"}}


def test_standard_fields_are_not_custom_attributes(sandbox, send):
    send(sandbox, first_name="Ada", country="NO", email="ada@example.com", peak_tier="gold")
    profile = sandbox.profile("u")
    assert profile["first_name"] == "Ada"
    assert profile["country"] == "NO"
    assert profile["email"] == "ada@example.com"
    assert profile["custom_attributes"] == {"peak_tier": "gold"}


def test_invalid_key_or_long_string_rejects_the_object(sandbox, track):
    body = {
        "attributes": [
            {"external_id": "a", "$bad": 1},
            {"external_id": "b", "x": "y" * 256},
            {"external_id": "c", "x": "ok"},
        ]
    }
    errors = track(sandbox, body).json()["errors"]
    assert [e["index"] for e in errors] == [0, 1]
    assert sandbox.profile("c") is not None


def test_one_invalid_nested_value_drops_every_nested_update(sandbox, track, custom):
    body = {
        "attributes": [
            {"external_id": "a", "pet": {"bad key": 1}},
            {"external_id": "b", "pet": {"name": "Rex"}, "plan": "pro"},
        ]
    }
    response = track(sandbox, body)
    assert response.json()["errors"][0]["index"] == 0
    assert custom(sandbox, "b") == {"plan": "pro"}
