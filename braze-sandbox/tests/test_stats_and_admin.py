"""Admin API: stats that describe the client's behaviour, runtime config, reset."""

from __future__ import annotations

import threading

import pytest


def test_max_arrivals_in_window_counts_busiest_window(sandbox, track):
    for i in range(5):
        track(sandbox, {"attributes": [{"external_id": f"u{i}", "x": 1}]})
    stats = sandbox.stats()
    assert stats["max_arrivals_in_window"] == 5
    assert stats["by_status"] == {"201": 5}
    assert stats["objects_applied"] == 5
    assert stats["attributes_processed"] == 5


def test_concurrent_requests_for_one_user_are_counted_as_conflicts(sandbox, track):
    sandbox.configure(latency_ms=300)
    try:
        threads = [
            threading.Thread(
                target=track, args=(sandbox, {"attributes": [{"external_id": "same", "x": i}]})
            )
            for i in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        track(sandbox, {"attributes": [{"external_id": "same", "x": 9}]})
    finally:
        sandbox.configure(latency_ms=0)
    assert sandbox.stats()["concurrent_user_conflicts"] == 1


def test_request_sizes_are_tracked(sandbox, track):
    track(sandbox, {"attributes": [{"external_id": f"u{i}", "x": 1} for i in range(7)]})
    stats = sandbox.stats()
    assert stats["max_objects_in_request"] == 7
    assert stats["max_body_bytes_seen"] > 100


def test_reset_empties_everything(sandbox, track):
    track(sandbox, {"attributes": [{"external_id": "u", "x": 1}]})
    sandbox.reset()
    assert sandbox.profiles() == []
    assert sandbox.stats()["requests"] == 0


def test_unknown_config_key_is_rejected(sandbox):
    from braze_sandbox.testing import SandboxError

    with pytest.raises(SandboxError, match="unknown setting"):
        sandbox.configure(fault_everything=1)


def test_profiles_survive_a_restart_in_the_db_file(tmp_path, track):
    from braze_sandbox.testing import SandboxProcess

    db = str(tmp_path / "keep.db")
    with SandboxProcess(db_path=db) as first:
        first.track({"attributes": [{"external_id": "u", "plan": "pro"}]})
    with SandboxProcess(db_path=db) as second:
        assert second.profile("u")["custom_attributes"] == {"plan": "pro"}


def test_data_points_count_attribute_sets_and_event_properties_not_identifiers(sandbox):
    sandbox.track(
        {
            "attributes": [
                {"external_id": "u1", "a": 1, "b": None, "_update_existing_only": False}
            ],
            "events": [
                {
                    "external_id": "u1",
                    "name": "e",
                    "time": "2026-01-01T00:00:00Z",
                    "properties": {"x": 1, "y": 2},
                }
            ],
        }
    )
    assert sandbox.stats()["data_points"] == 2 + 3
