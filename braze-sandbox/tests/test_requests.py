"""Request-level rules: auth, size, shape."""

from __future__ import annotations


def test_missing_key_is_401(sandbox, track):
    response = track(sandbox, {"attributes": [{"external_id": "a", "x": 1}]}, key=None)
    assert response.status_code == 401
    assert "message" in response.json()


def test_unknown_key_is_401(sandbox, track):
    response = track(sandbox, {"attributes": [{"external_id": "a", "x": 1}]}, key="nope")
    assert response.status_code == 401


def test_key_without_users_track_permission_is_403(sandbox, track):
    response = track(sandbox, {"attributes": [{"external_id": "a"}]}, key="read-nothing-key")
    assert response.status_code == 403
    assert sandbox.profiles() == []


def test_success_counts_only_arrays_sent(sandbox, track):
    response = track(sandbox, {"attributes": [{"external_id": "a", "x": 1}]})
    assert response.status_code == 201
    assert response.json() == {"message": "success", "attributes_processed": 1}


def test_more_than_75_objects_combined_is_400(sandbox, track):
    body = {
        "attributes": [{"external_id": f"u{i}", "x": 1} for i in range(40)],
        "events": [{"external_id": f"u{i}", "name": "e", "time": "2024-01-01"} for i in range(36)],
    }
    response = track(sandbox, body)
    assert response.status_code == 400
    assert response.json()["message"] == "Max Input Length Exceeded"
    assert sandbox.profiles() == []


def test_legacy_limits_count_per_array(sandbox, track):
    sandbox.configure(legacy_per_array_limits=True)
    try:
        body = {
            "attributes": [{"external_id": f"u{i}", "x": 1} for i in range(75)],
            "events": [{"external_id": "u1", "name": "e", "time": "2024-01-01"}] * 75,
        }
        assert track(sandbox, body).status_code == 201
        body["attributes"].append({"external_id": "u76", "x": 1})
        assert track(sandbox, body).status_code == 400
    finally:
        sandbox.configure(legacy_per_array_limits=False)


def test_body_over_max_bytes_is_413(sandbox, track):
    sandbox.configure(max_body_bytes=1000)
    try:
        body = {"attributes": [{"external_id": f"u{i}", "x": "y" * 200} for i in range(10)]}
        assert track(sandbox, body).status_code == 413
    finally:
        sandbox.configure(max_body_bytes=4_000_000)


def test_malformed_json_is_400(sandbox, track):
    response = track(sandbox, b'{"attributes": [')
    assert response.status_code == 400
