"""The delivery ledger, seen from outside: what reaches the Braze sandbox on each run."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from braze_sandbox.testing import SandboxProcess
from braze_target_harness import (
    API_KEY,
    customers,
    error_lines,
    read_jsonl,
    record,
    run_target,
    schema_message,
    state,
    target_config,
)


def report(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "report.json").read_text())


def attributes_of(braze: SandboxProcess, user: str) -> dict:
    profile = braze.profile(user)
    assert profile is not None, user
    return profile.get("custom_attributes") or {}


def sync(n: int = 300, **values) -> list[dict]:
    return [schema_message(), *customers(n, **values), state("end")]


def changed(customer: str, **values) -> dict:
    """A record of `customer` with its `customers()` values, some of them changed."""
    index = int(customer[1:])
    base = {"peak_churn_probability": round(index / 1000, 3), "peak_segment": "loyal"}
    return record(customer, **{**base, **values})


def event_messages(stream: str, keyed: bool, ids: range) -> list[dict]:
    props = {
        "event_id": {"type": "string"},
        "customer_id": {"type": "string"},
        "event": {"type": "string"},
        "at": {"type": "string", "format": "date-time"},
        "amount": {"type": "number"},
    }
    schema = schema_message(stream, props, key="event_id" if keyed else "customer_id")
    if not keyed:
        schema["key_properties"] = []
    schema.pop("bookmark_properties", None)
    records = [
        {
            "type": "RECORD",
            "stream": stream,
            "record": {
                "event_id": f"{stream}-{i}",
                "customer_id": f"u{i % 7}",
                "event": "purchase_intent",
                "at": f"2026-11-28T06:{i % 60:02d}:00Z",
                "amount": i,
            },
        }
        for i in ids
    ]
    return [schema, *records, state(f"end-{ids.stop}", stream)]


EVENTS_MAPPING = {
    stream: {"object_type": "events", "event_name_property": "event", "time_property": "at"}
    for stream in ("keyed_events", "plain_events")
}


def test_an_identical_rerun_sends_nothing_and_still_moves_state(braze, tmp_path):
    config = target_config(braze, tmp_path)
    first = run_target(config, sync(), tmp_path)
    assert first.returncode == 0, first.stderr
    requests_before = braze.stats()["requests"]

    again = run_target(config, sync(), tmp_path)

    assert again.returncode == 0, again.stderr
    assert braze.stats()["requests"] == requests_before  # not one request
    assert again.states[-1] == state("end")["value"]
    counts = report(tmp_path)
    assert counts["unchanged"] == 300
    assert counts["objects_sent"] == 0
    assert "300 unchanged" in again.stderr


def test_only_the_attributes_that_changed_are_sent(braze, tmp_path):
    config = target_config(braze, tmp_path)
    assert run_target(config, sync(), tmp_path).returncode == 0
    points_before = braze.stats()["data_points"]
    messages = [schema_message(), *customers(300)]
    for i in range(0, 50, 10):  # 5 customers, one attribute each
        messages[1 + i] = changed(f"c{i}", peak_segment="at_risk")
    messages.append(state("end"))

    run = run_target(config, messages, tmp_path)

    assert run.returncode == 0, run.stderr
    assert braze.stats()["data_points"] - points_before == 5
    assert report(tmp_path)["unchanged"] == 295
    assert attributes_of(braze, "c10") == {
        "peak_churn_probability": 0.01,
        "peak_segment": "at_risk",
    }


def test_a_null_counts_as_a_value(braze, tmp_path):
    config = target_config(braze, tmp_path)
    assert run_target(config, sync(3), tmp_path).returncode == 0
    to_null = [schema_message(), changed("c1", peak_segment=None), state("nulled")]
    assert run_target(config, to_null, tmp_path).returncode == 0
    assert "peak_segment" not in attributes_of(braze, "c1")  # the null removed it
    points = braze.stats()["data_points"]

    again = run_target(config, to_null, tmp_path)

    assert again.returncode == 0, again.stderr
    assert braze.stats()["data_points"] == points
    assert report(tmp_path)["unchanged"] == 1


def test_nested_objects_and_arrays_compare_in_canonical_form(braze, tmp_path):
    props = {
        "customer_id": {"type": "string"},
        "peak_scores": {"type": "object"},
        "peak_tags": {"type": "array"},
    }
    config = target_config(braze, tmp_path)

    def messages(scores: dict) -> list[dict]:
        body = {"customer_id": "c1", "peak_scores": scores, "peak_tags": ["a", "b"]}
        return [
            schema_message(properties=props, bookmark=None),
            {"type": "RECORD", "stream": "customer_attributes", "record": body},
            state("s"),
        ]

    assert run_target(config, messages({"churn": 0.5, "ltv": 10}), tmp_path).returncode == 0
    points = braze.stats()["data_points"]
    reordered = run_target(config, messages({"ltv": 10, "churn": 0.5}), tmp_path)
    assert reordered.returncode == 0, reordered.stderr
    assert braze.stats()["data_points"] == points

    changed_inside = run_target(config, messages({"ltv": 10, "churn": 0.6}), tmp_path)

    assert changed_inside.returncode == 0
    assert braze.stats()["data_points"] == points + 1  # only the nested object
    assert attributes_of(braze, "c1")["peak_scores"] == {"churn": 0.6, "ltv": 10}


def test_full_resync_sends_everything_and_refreshes_the_ledger(braze, tmp_path):
    config = target_config(braze, tmp_path)
    assert run_target(config, sync(), tmp_path).returncode == 0
    points = braze.stats()["data_points"]

    resync = run_target({**config, "full_resync": True}, sync(), tmp_path)

    assert resync.returncode == 0, resync.stderr
    assert braze.stats()["data_points"] == points + 600
    after = run_target(config, sync(), tmp_path)
    assert after.returncode == 0
    assert braze.stats()["data_points"] == points + 600


def test_send_only_changes_off_sends_every_attribute_every_time(braze, tmp_path):
    config = target_config(braze, tmp_path, send_only_changes=False)
    assert run_target(config, sync(10), tmp_path).returncode == 0
    assert run_target(config, sync(10), tmp_path).returncode == 0
    assert braze.stats()["data_points"] == 2 * 20


def test_a_record_braze_rejected_is_not_recorded_so_the_next_run_sends_it(braze, tmp_path):
    braze.configure(errors={"c3": "BLACKLISTED_EXTERNAL_USER_ID"})
    config = target_config(braze, tmp_path, max_rejected_ratio=0.1)
    assert run_target(config, sync(20), tmp_path).returncode == 0
    braze.configure(errors={})  # fixed in Braze
    points = braze.stats()["data_points"]

    rerun = run_target(config, sync(20), tmp_path)

    assert rerun.returncode == 0, rerun.stderr
    assert braze.stats()["data_points"] - points == 2  # c3, and nobody else
    assert attributes_of(braze, "c3") == {"peak_churn_probability": 0.003, "peak_segment": "loyal"}


def test_objects_of_a_request_with_an_unindexed_error_are_never_recorded(braze, tmp_path):
    braze.configure(fault_unindexed_error=1.0)
    config = target_config(braze, tmp_path, max_rejected_ratio=1.0)
    assert run_target(config, sync(20), tmp_path).returncode == 0
    assert braze.profiles() == []
    braze.configure(fault_unindexed_error=0.0)

    rerun = run_target(config, sync(20), tmp_path)

    assert rerun.returncode == 0, rerun.stderr
    assert len(braze.profiles()) == 20


def test_a_failed_run_records_what_braze_confirmed_and_nothing_else(braze, tmp_path):
    braze.configure(fail_after_requests=2)
    config = target_config(braze, tmp_path, max_retries=0)
    failed = run_target(config, sync(), tmp_path)
    assert failed.returncode == 1
    assert len(error_lines(failed.stderr)) == 1
    confirmed = braze.stats()["data_points"]
    assert confirmed == 2 * 75 * 2  # two requests of 75 customers, 2 attributes each
    braze.configure(fail_after_requests=0)

    rerun = run_target(config, sync(), tmp_path)

    assert rerun.returncode == 0, rerun.stderr
    assert braze.stats()["data_points"] == 600  # what was confirmed was not sent again
    assert len(braze.profiles()) == 300


def test_dry_run_reports_what_a_real_run_would_send_and_never_writes(braze, tmp_path):
    config = target_config(braze, tmp_path)
    assert run_target(config, sync(), tmp_path).returncode == 0
    messages = [
        schema_message(),
        changed("c7", peak_segment="new"),
        *customers(10, start=100),
        state("x"),
    ]
    dry = run_target(
        {**config, "dry_run": True, "dry_run_path": str(tmp_path / "dry.jsonl")}, messages, tmp_path
    )
    assert dry.returncode == 0, dry.stderr
    (body,) = read_jsonl(tmp_path / "dry.jsonl")
    assert body == {"attributes": [{"external_id": "c7", "peak_segment": "new"}]}
    assert report(tmp_path)["unchanged"] == 10
    assert "would be sent" in dry.stderr
    points = braze.stats()["data_points"]

    real = run_target(config, messages, tmp_path)

    assert real.returncode == 0
    assert braze.stats()["data_points"] == points + 1  # the dry run recorded nothing


def test_two_workspaces_share_one_ledger_without_seeing_each_other(braze, tmp_path):
    ledger_url = f"sqlite:///{tmp_path / 'shared-ledger.sqlite'}"
    assert (
        run_target(
            target_config(braze, tmp_path, ledger_url=ledger_url), sync(), tmp_path
        ).returncode
        == 0
    )
    with SandboxProcess(api_key=API_KEY) as other:
        config = target_config(other, tmp_path, ledger_url=ledger_url)

        run = run_target(config, sync(), tmp_path)

        assert run.returncode == 0, run.stderr
        assert len(other.profiles()) == 300
        assert other.stats()["data_points"] == 600


def test_events_are_delivered_once_across_reruns_with_or_without_key_properties(braze, tmp_path):
    config = target_config(
        braze, tmp_path, identifier_property="customer_id", stream_mappings=EVENTS_MAPPING
    )
    first = [
        *event_messages("keyed_events", True, range(40)),
        *event_messages("plain_events", False, range(40)),
    ]
    assert run_target(config, first, tmp_path).returncode == 0
    # A re-emit of everything, plus ten new occurrences per stream.
    again = [
        *event_messages("keyed_events", True, range(50)),
        *event_messages("plain_events", False, range(50)),
    ]

    run = run_target(config, again, tmp_path)

    assert run.returncode == 0, run.stderr
    assert report(tmp_path)["duplicates"] == 80
    events = braze.events()
    assert len(events) == 100
    keys = {(e["external_id"], e["time"], e.get("properties", {}).get("event_id")) for e in events}
    assert len(keys) == 100  # each once


def test_one_event_emitted_twice_in_a_run_is_sent_once(braze, tmp_path):
    config = target_config(braze, tmp_path, stream_mappings=EVENTS_MAPPING)
    messages = event_messages("plain_events", False, range(5))
    doubled = [messages[0], *messages[1:-1], *messages[1:-1], messages[-1]]

    run = run_target(config, doubled, tmp_path)

    assert run.returncode == 0, run.stderr
    assert len(braze.events()) == 5
    assert report(tmp_path)["duplicates"] == 5


def test_a_value_changed_back_while_its_change_is_in_flight_is_still_sent(braze, tmp_path):
    """c1 is at 'loyal' in the ledger; the run sends 'at_risk', then 'loyal' again."""
    config = target_config(braze, tmp_path)
    assert run_target(config, sync(200), tmp_path).returncode == 0
    braze.configure(latency_ms=[150, 150])  # the first request is in flight when c1 returns
    messages = [
        schema_message(),
        changed("c1", peak_segment="at_risk"),
        *customers(74, start=100, peak_note="x"),
        changed("c1", peak_segment="loyal"),
        *customers(74, start=180, peak_note="y"),
        state("end"),
    ]

    run = run_target(config, messages, tmp_path)

    assert run.returncode == 0, run.stderr
    assert attributes_of(braze, "c1")["peak_segment"] == "loyal"


def test_a_corrupt_ledger_ends_the_run_with_one_line_naming_ledger_url(braze, tmp_path):
    ledger = tmp_path / "ledger.sqlite"
    ledger.write_bytes(b"this is not a database, " * 100)
    run = run_target(target_config(braze, tmp_path), sync(5), tmp_path)
    assert run.returncode == 1
    (line,) = error_lines(run.stderr)
    assert "ledger_url" in line
    assert "Traceback" not in run.stderr
    assert braze.stats()["requests"] == 0
    assert run.states == []


def test_an_unknown_ledger_schema_version_is_refused(braze, tmp_path):
    config = target_config(braze, tmp_path)
    assert run_target(config, sync(5), tmp_path).returncode == 0
    with sqlite3.connect(tmp_path / "ledger.sqlite") as connection:
        connection.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    run = run_target(config, sync(5), tmp_path)
    assert run.returncode == 1
    (line,) = error_lines(run.stderr)
    assert "schema version 99" in line


@pytest.mark.postgres
def test_the_ledger_works_the_same_in_postgresql(braze, tmp_path, postgres_url):
    config = target_config(braze, tmp_path, ledger_url=postgres_url)
    assert run_target(config, sync(), tmp_path).returncode == 0
    messages = [schema_message(), *customers(300)]
    messages[5] = changed("c4", peak_segment="gone")
    messages.append(state("end"))

    run = run_target(config, messages, tmp_path)

    assert run.returncode == 0, run.stderr
    assert braze.stats()["data_points"] == 601
