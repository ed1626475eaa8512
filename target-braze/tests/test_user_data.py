"""Deletes, aliases and identify, subscription states: the CLI against the sandbox."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from braze_target_harness import read_jsonl, run_target, send, start_target, target_config

STRING = {"type": "string"}


def schema(stream: str, *names: str) -> dict[str, Any]:
    return {
        "type": "SCHEMA",
        "stream": stream,
        "schema": {
            "type": "object",
            "properties": {n: {"type": ["string", "null"]} for n in names},
        },
        "key_properties": [names[0]],
    }


def rec(stream: str, **values: Any) -> dict[str, Any]:
    return {"type": "RECORD", "stream": stream, "record": values}


def state(n: int) -> dict[str, Any]:
    return {"type": "STATE", "value": {"bookmarks": {"s": {"n": n}}}}


def users(braze, n: int) -> list[str]:
    ids = [f"u{i}" for i in range(n)]
    for start in range(0, n, 75):
        braze.track(
            {"attributes": [{"external_id": e, "plan": "pro"} for e in ids[start : start + 75]]}
        )
    return ids


def known(braze, ids: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(ids), 50):
        answer = braze.export(external_ids=ids[start : start + 50])
        found |= {u["external_id"] for u in answer["users"]}
    return found


DELETES = {"gone": {"object_type": "deletes"}}


def test_deletes_are_batched_at_50_and_settle_with_state(braze, tmp_path: Path):
    ids = users(braze, 120)
    messages = [schema("gone", "customer_id"), *[rec("gone", customer_id=i) for i in ids], state(1)]
    run = run_target(target_config(braze, tmp_path, stream_mappings=DELETES), messages, tmp_path)
    assert run.returncode == 0, run.stderr
    assert known(braze, ids) == set()
    stats = braze.stats()["user_data"]["/users/delete"]
    assert stats["requests"] == 3
    assert stats["max_ids_in_request"] == 50
    assert run.states == [{"bookmarks": {"s": {"n": 1}}}]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["endpoints"]["/users/delete"]["requests"] == 3
    assert report["endpoints"]["/users/delete"]["objects_sent"] == 120
    assert report["data_points"] == 0
    assert "/users/delete: 3 requests, 120 objects" in run.stderr


def test_a_refused_delete_goes_to_the_rejects_file_and_the_rest_are_deleted(braze, tmp_path):
    ids = users(braze, 10)
    braze.configure(errors={"u3": "BLACKLISTED_EXTERNAL_USER_ID"})
    messages = [schema("gone", "customer_id"), *[rec("gone", customer_id=i) for i in ids], state(1)]
    config = target_config(braze, tmp_path, stream_mappings=DELETES, max_rejected_ratio=0.5)
    run = run_target(config, messages, tmp_path)
    assert run.returncode == 0, run.stderr
    assert known(braze, ids) == {"u3"}
    (rejected,) = read_jsonl(tmp_path / "rejects.jsonl")
    assert rejected["identifier"] == "u3"
    assert rejected["error_type"] == "BLACKLISTED_EXTERNAL_USER_ID"
    assert run.states


def test_delete_guard_stops_the_run_before_any_delete(braze, tmp_path):
    ids = users(braze, 30)
    messages = [schema("gone", "customer_id"), *[rec("gone", customer_id=i) for i in ids], state(1)]
    config = target_config(braze, tmp_path, stream_mappings=DELETES, max_deletes_per_run=20)
    run = run_target(config, messages, tmp_path)
    assert run.returncode == 1
    assert "30 users would be deleted" in run.stderr
    assert "max_deletes_per_run 20" in run.stderr
    assert known(braze, ids) == set(ids)
    assert run.states == []
    assert "/users/delete" not in braze.stats()["user_data"]


def test_delete_ratio_guard_counts_the_runs_records(braze, tmp_path):
    ids = users(braze, 10)
    mappings = {"people": {"deleted_property": "_sdc_deleted_at"}}
    records = [
        rec("people", customer_id=i, plan="max", _sdc_deleted_at="2026-12-01" if n < 3 else None)
        for n, i in enumerate(ids)
    ]
    messages = [schema("people", "customer_id", "plan", "_sdc_deleted_at"), *records, state(1)]
    config = target_config(braze, tmp_path, stream_mappings=mappings, max_delete_ratio=0.2)
    run = run_target(config, messages, tmp_path)
    assert run.returncode == 1
    assert "3 users would be deleted (30.0% of the run's 10 records)" in run.stderr
    assert known(braze, ids) == set(ids)


def test_deleted_property_routes_records_to_deletes_and_the_ledger_forgets_them(braze, tmp_path):
    ids = users(braze, 4)
    mappings = {"people": {"deleted_property": "_sdc_deleted_at"}}
    first = [
        schema("people", "customer_id", "plan", "_sdc_deleted_at"),
        *[rec("people", customer_id=i, plan="max") for i in ids],
        state(1),
    ]
    config = target_config(braze, tmp_path, stream_mappings=mappings)
    assert run_target(config, first, tmp_path).returncode == 0
    deleted = [*first[:1], rec("people", customer_id="u1", _sdc_deleted_at="2026-12-01"), state(2)]
    run = run_target(config, deleted, tmp_path)
    assert run.returncode == 0, run.stderr
    assert known(braze, ids) == {"u0", "u2", "u3"}
    # Created again with the same values: the ledger forgot u1, so everything is sent.
    again = [*first[:1], rec("people", customer_id="u1", plan="max"), state(3)]
    assert run_target(config, again, tmp_path).returncode == 0
    assert braze.profile("u1")["custom_attributes"] == {"plan": "max"}


def test_dry_run_lists_deletes_and_sends_nothing(braze, tmp_path):
    ids = users(braze, 3)
    messages = [schema("gone", "customer_id"), *[rec("gone", customer_id=i) for i in ids], state(1)]
    dry = tmp_path / "dry.jsonl"
    config = target_config(
        braze, tmp_path, stream_mappings=DELETES, dry_run=True, dry_run_path=str(dry)
    )
    run = run_target(config, messages, tmp_path)
    assert run.returncode == 0, run.stderr
    assert read_jsonl(dry) == [{"endpoint": "/users/delete", "body": {"external_ids": ids}}]
    assert known(braze, ids) == set(ids)


ALIASES = {
    "aliases": {"object_type": "aliases", "alias_label": "crm", "identify_property": "external_id"}
}
BY_ALIAS = {"profiles": {"identifier_type": "user_alias", "alias_label": "crm"}}


def test_aliases_are_created_before_track_uses_them_then_identified_and_merged(braze, tmp_path):
    braze.track({"attributes": [{"external_id": "e1", "plan": "pro"}]})
    create = [
        schema("aliases", "customer_id", "external_id"),
        *[rec("aliases", customer_id=f"a{i}", external_id=None) for i in range(3)],
        schema("profiles", "customer_id", "segment"),
        *[rec("profiles", customer_id=f"a{i}", segment="vip") for i in range(3)],
        state(1),
    ]
    config = target_config(
        braze, tmp_path, stream_mappings={**ALIASES, **BY_ALIAS}, alias_wait_seconds=0.2
    )
    run = run_target(config, create, tmp_path)
    assert run.returncode == 0, run.stderr
    alias = {"alias_name": "a0", "alias_label": "crm"}
    (user,) = braze.export(user_aliases=[alias])["users"]
    assert user["custom_attributes"] == {"segment": "vip"}
    identify = [
        schema("aliases", "customer_id", "external_id"),
        rec("aliases", customer_id="a0", external_id="e1"),
        rec("aliases", customer_id="a1", external_id="e2"),
        state(2),
    ]
    run = run_target(config, identify, tmp_path)
    assert run.returncode == 0, run.stderr
    assert braze.profile("e1")["custom_attributes"] == {"plan": "pro", "segment": "vip"}
    assert braze.profile("e1")["user_aliases"] == [alias]
    assert braze.profile("e2")["custom_attributes"] == {"segment": "vip"}
    assert braze.stats()["user_data"]["/users/identify"]["requests"] == 1


def test_merge_behavior_none_moves_only_the_alias(braze, tmp_path):
    braze.track({"attributes": [{"external_id": "e1", "plan": "pro"}]})
    braze.post("/users/alias/new", {"user_aliases": [{"alias_name": "a0", "alias_label": "crm"}]})
    braze.track(
        {
            "attributes": [
                {"user_alias": {"alias_name": "a0", "alias_label": "crm"}, "segment": "vip"}
            ]
        }
    )
    mappings = {"aliases": {**ALIASES["aliases"], "merge_behavior": "none"}}
    messages = [
        schema("aliases", "customer_id", "external_id"),
        rec("aliases", customer_id="a0", external_id="e1"),
        state(1),
    ]
    run = run_target(target_config(braze, tmp_path, stream_mappings=mappings), messages, tmp_path)
    assert run.returncode == 0, run.stderr
    assert braze.profile("e1")["custom_attributes"] == {"plan": "pro"}


SUBS = {
    "subs": {
        "object_type": "subscriptions",
        "subscription_group_id_property": "group",
        "subscription_state_property": "state",
    }
}


def test_subscription_states_for_200_users_through_users_track(braze, tmp_path):
    ids = users(braze, 200)
    messages = [
        schema("subs", "customer_id", "group", "state"),
        *[rec("subs", customer_id=i, group="g1", state="Subscribed") for i in ids],
        state(1),
    ]
    run = run_target(target_config(braze, tmp_path, stream_mappings=SUBS), messages, tmp_path)
    assert run.returncode == 0, run.stderr
    assert braze.profile("u199")["subscription_groups"] == [{"id": "g1", "status": "subscribed"}]
    # Packed 150 at a time: 2 /users/track requests (75 users each) beat 3 of
    # /v2/subscription/status/set (50 each); the last 50 tie, and go to the latter (it
    # leaves /users/track's shared limit alone): 3 requests instead of 4.
    assert braze.stats()["requests"] == 3 + 2
    assert braze.stats()["user_data"]["/v2/subscription/status/set"]["requests"] == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["data_points"] == 0
    assert report["records_accepted"] == 200


def test_subscriptions_use_the_v2_endpoint_when_it_needs_fewer_requests(braze, tmp_path):
    ids = users(braze, 100)
    messages = [
        schema("subs", "customer_id", "group", "state"),
        *[rec("subs", customer_id=i, group="g1", state="unsubscribed") for i in ids],
        state(1),
    ]
    config = target_config(braze, tmp_path, stream_mappings=SUBS, max_objects_per_request=25)
    run = run_target(config, messages, tmp_path)
    assert run.returncode == 0, run.stderr
    assert braze.stats()["user_data"]["/v2/subscription/status/set"]["requests"] == 2
    assert braze.profile("u0")["subscription_groups"] == [{"id": "g1", "status": "unsubscribed"}]


def test_a_state_braze_does_not_take_is_rejected_before_sending(braze, tmp_path):
    users(braze, 1)
    messages = [
        schema("subs", "customer_id", "group", "state"),
        rec("subs", customer_id="u0", group="g1", state="maybe"),
        state(1),
    ]
    config = target_config(braze, tmp_path, stream_mappings=SUBS, max_rejected_ratio=1)
    run = run_target(config, messages, tmp_path)
    assert run.returncode == 0, run.stderr
    (rejected,) = read_jsonl(tmp_path / "rejects.jsonl")
    assert rejected["error_type"] == "INVALID_SUBSCRIPTION_STATE"
    assert "'state' is 'maybe'; Braze takes subscribed or unsubscribed" in rejected["reason"]
    assert "user_data" not in braze.stats() or not braze.stats()["user_data"].get(
        "/v2/subscription/status/set"
    )


def _deletes_of(ids: list[str]) -> list[dict[str, Any]]:
    return [schema("gone", "customer_id"), *[rec("gone", customer_id=i) for i in ids], state(1)]


def test_the_delete_endpoint_keeps_its_own_rate_limit(braze, tmp_path):
    ids = users(braze, 200)
    braze.configure(user_data_rate_limit=2, user_data_rate_window=1)
    config = target_config(
        braze,
        tmp_path,
        stream_mappings=DELETES,
        user_data_requests_per_window=2,
        user_data_rate_window_seconds=1,
    )
    run = run_target(config, _deletes_of(ids), tmp_path)
    assert run.returncode == 0, run.stderr
    assert known(braze, ids) == set()
    stats = braze.stats()["user_data"]
    assert stats["/users/delete"]["by_status"] == {"201": 4}
    assert stats["max_arrivals_in_window"]["user_data"] <= 2


def test_429s_from_a_user_data_endpoint_are_retried_as_for_users_track(braze, tmp_path):
    ids = users(braze, 200)
    braze.configure(user_data_rate_limit=1, user_data_rate_window=1)
    config = target_config(
        braze, tmp_path, stream_mappings=DELETES, user_data_requests_per_window=0
    )
    run = run_target(config, _deletes_of(ids), tmp_path)
    assert run.returncode == 0, run.stderr
    assert known(braze, ids) == set()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["endpoints"]["/users/delete"]["rate_limited"] >= 1
    assert report["endpoints"]["/users/delete"]["objects_sent"] == 200
    assert braze.stats()["user_data"]["/users/delete"]["by_status"]["201"] == 4


def test_a_delete_ratio_above_one_is_one_line_naming_the_setting(braze, tmp_path):
    run = run_target(target_config(braze, tmp_path, max_delete_ratio=2), [], tmp_path)
    assert run.returncode == 1
    (line,) = [text for text in run.stderr.splitlines() if "error:" in text]
    assert (
        line
        == "target-braze: error: max_delete_ratio must be between 0 and 1 (0.1 = 10%; 1: no limit)"
    )
    assert not (tmp_path / "ledger.sqlite").exists()


def test_kill_9_while_deleting_then_a_rerun_loses_nothing_and_duplicates_no_event(braze, tmp_path):
    """Killed once Braze applied the first delete: STATE never passed the deletes, so the
    rerun sends all of them again (harmless: an absent user is not deleted twice, and the
    resend is counted), and the events the first run delivered are not sent again."""
    ids = users(braze, 120)
    properties = {"visit_id": STRING, "customer_id": STRING, "at": STRING}
    visits = [
        rec("visits", visit_id=f"v{n}", customer_id=ids[n], at="2026-12-01T00:00:00Z")
        for n in range(40)
    ]
    messages = [
        {
            "type": "SCHEMA",
            "stream": "visits",
            "key_properties": ["visit_id"],
            "schema": {"type": "object", "properties": properties},
        },
        *visits,
        state(1),
        schema("gone", "customer_id"),
        *[rec("gone", customer_id=i) for i in ids],
        state(2),
    ]
    mappings = {
        **DELETES,
        "visits": {"object_type": "events", "event_name": "visit", "time_property": "at"},
    }
    config = target_config(braze, tmp_path, stream_mappings=mappings)
    # One user-data request per hour: after the first of the three deletes the run cannot
    # end, however slow the machine, so the kill lands between two deletes.
    held = {**config, "user_data_requests_per_window": 1, "user_data_rate_window_seconds": 3600}
    process = start_target(held, tmp_path)
    send(process, messages)
    assert process.stdin is not None
    process.stdin.close()
    while len(known(braze, ids)) == 120:  # decided by progress: the first delete applied
        assert process.poll() is None, "the target ended before any delete was applied"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.stdout is not None
    states = [json.loads(line) for line in process.stdout.read().splitlines() if line.strip()]
    assert {"bookmarks": {"s": {"n": 2}}} not in states  # STATE never passed a delete
    rerun = run_target(config, messages, tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.states[-1] == {"bookmarks": {"s": {"n": 2}}}
    assert known(braze, ids) == set()
    assert len(braze.events()) == 40
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["endpoints"]["/users/delete"]["objects_sent"] == 120
    assert report["duplicates"] + report["unknown"] == 40
