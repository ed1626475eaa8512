"""Every bad input ends with one `target-braze: error:` line, and STATE never passes it."""

from __future__ import annotations

import json
import os

import cli_forkserver
import pytest
from braze_target_harness import (
    customers,
    error_lines,
    record,
    schema_message,
    state,
    target_config,
)

GOOD = [schema_message(), *customers(3), state("before")]


def run_lines(config: dict, lines: list[bytes], tmp_path, env: dict | None = None):
    """Run the CLI on raw input lines (bytes: some tests need what JSON cannot say)."""
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    return cli_forkserver.run(
        "target_braze",
        ["--config", str(config_path)],
        input=b"".join(line + b"\n" for line in lines),
        timeout=120,
        env={**os.environ, **(env or {})},
        text=False,
    )


def encoded(messages: list[dict]) -> list[bytes]:
    return [json.dumps(message).encode() for message in messages]


def last_line(stderr: bytes) -> str:
    return stderr.decode(errors="replace").strip().splitlines()[-1]


def assert_fails_with(result, expected: str, states: list[dict] | None = None) -> None:
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 1, stderr
    assert last_line(result.stderr).startswith("target-braze: error: "), stderr
    assert expected in last_line(result.stderr), last_line(result.stderr)
    assert len(error_lines(stderr)) == 1
    assert "Traceback" not in stderr
    emitted = [json.loads(line) for line in result.stdout.decode().splitlines() if line.strip()]
    assert emitted == (states or []), emitted


BEFORE = [state("before")["value"]]


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        (
            b'{"type": "RECORD", "stream": "customer_attributes", "record": {',
            "line 6: is not valid JSON",
        ),
        (
            b'{"type": "RECORD", "stream": "customer_attributes", '
            b'"record": {"customer_id": "c9", "peak_churn_probability": NaN}}',
            "line 6: holds NaN or Infinity",
        ),
        (
            b'{"type": "RECORD", "stream": "customer_attributes", '
            b'"record": {"customer_id": "c9", "peak_segment": "\xff"}}',
            "line 6: is not valid UTF-8",
        ),
        (b'{"type": "RECORDS", "stream": "x"}', "line 6: not a Singer message type"),
        (
            b'{"type": "RECORD", "stream": "elsewhere", "record": {"customer_id": "c9"}}',
            "line 6: a RECORD of stream 'elsewhere' arrived before its SCHEMA",
        ),
        (b'{"type": "RECORD", "stream": "customer_attributes"}', "line 6: a malformed Singer"),
    ],
    ids=["malformed-json", "nan", "not-utf8", "unknown-type", "record-before-schema", "no-record"],
)
def test_a_bad_line_is_one_error_naming_its_line_and_state_stops_before_it(
    braze, tmp_path, bad_line, expected
):
    lines = [*encoded(GOOD), bad_line, *encoded([record("c7"), state("after")])]
    result = run_lines(target_config(braze, tmp_path), lines, tmp_path)
    assert_fails_with(result, expected, BEFORE)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"object_type": "event"},
            "setting object_type: 'event' is not allowed; use one of: attributes, events, "
            "purchases",
        ),
        (
            {"max_retries": "lots"},
            "setting max_retries: 'lots' is not a whole number; give a whole number, e.g. 8",
        ),
        (
            {"stream_mappings": {"customer_attributes": {"null_values": "drop"}}},
            "setting stream_mappings.customer_attributes.null_values: 'drop' is not allowed; "
            "use one of: unset, skip",
        ),
    ],
)
def test_an_invalid_setting_is_one_line_naming_it_and_the_allowed_values(
    braze, tmp_path, overrides, expected
):
    result = run_lines(target_config(braze, tmp_path, **overrides), encoded(GOOD), tmp_path)
    assert_fails_with(result, expected)
    assert braze.stats()["requests"] == 0


def test_a_property_setting_is_checked_against_the_schema_before_any_request(braze, tmp_path):
    events = {
        "customer_id": {"type": "string"},
        "event_name": {"type": "string"},
        "occurred_at": {"type": "string", "format": "date-time"},
    }
    mapping = {
        "app_events": {
            "object_type": "events",
            "event_name_property": "event_name",
            "time_property": "ts",
        }
    }
    messages = [*GOOD, schema_message("app_events", events, bookmark=None)]
    result = run_lines(
        target_config(braze, tmp_path, stream_mappings=mapping), encoded(messages), tmp_path
    )
    assert_fails_with(
        result,
        "stream 'app_events' has no property 'ts' for time_property (in "
        "stream_mappings.app_events); its properties are: customer_id, event_name, occurred_at",
        BEFORE,
    )


def test_a_misspelt_stream_mappings_entry_never_sends_a_stream_with_the_wrong_settings(
    braze, tmp_path
):
    events = {
        "customer_id": {"type": "string"},
        "event_name": {"type": "string"},
        "occurred_at": {"type": "string", "format": "date-time"},
    }
    typo = {
        "app_event": {
            "object_type": "events",
            "event_name_property": "event_name",
            "time_property": "occurred_at",
        }
    }
    event = {
        "type": "RECORD",
        "stream": "app_events",
        "record": {
            "customer_id": "u1",
            "event_name": "login",
            "occurred_at": "2026-11-28T06:00:00Z",
        },
    }
    messages = [schema_message("app_events", events, bookmark=None), event, state("s")]
    result = run_lines(
        target_config(braze, tmp_path, stream_mappings=typo), encoded(messages), tmp_path
    )
    assert_fails_with(
        result, "stream 'app_events' has no entry in stream_mappings, but the entry 'app_event'"
    )
    assert not [p for p in braze.profiles() if "event_name" in (p.get("custom_attributes") or {})]
    assert braze.stats()["requests"] == 0


def test_an_unused_stream_mappings_entry_is_warned_about_at_the_end(braze, tmp_path):
    config = target_config(
        braze, tmp_path, stream_mappings={"orders": {"object_type": "attributes"}}
    )
    result = run_lines(config, encoded(GOOD), tmp_path)
    assert result.returncode == 0, result.stderr
    assert b"stream_mappings entries matched no stream of this run: orders" in result.stderr


def test_a_dry_run_validates_the_endpoint_like_a_real_run(tmp_path):
    config = {
        "dry_run": True,
        "dry_run_path": str(tmp_path / "dry.jsonl"),
        "rest_endpoint": "US-99",
    }
    result = run_lines(config, encoded(GOOD), tmp_path)
    assert_fails_with(result, "rest_endpoint 'US-99' is neither a Braze instance code")


def test_a_dry_run_summary_says_would_be_sent(tmp_path):
    config = {
        "dry_run": True,
        "dry_run_path": str(tmp_path / "dry.jsonl"),
        "rest_endpoint": "US-03",
    }
    result = run_lines(config, encoded(GOOD), tmp_path)
    assert result.returncode == 0, result.stderr
    assert b"3 objects would be sent in 1 requests" in result.stderr


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"max_objects_per_request": 500}, "above Braze's documented limit of 75 objects"),
        ({"max_request_bytes": 9_000_000}, "above Braze's documented limit of 4 MB"),
    ],
)
def test_limits_beyond_brazes_maximum_are_warned_about_at_start(
    braze, tmp_path, overrides, expected
):
    result = run_lines(target_config(braze, tmp_path, **overrides), encoded(GOOD), tmp_path)
    assert result.returncode == 0, result.stderr
    assert expected.encode() in result.stderr


def test_rejects_name_the_run_the_time_and_the_input_line(braze, tmp_path):
    bad = record("c9", peak_churn_probability="high")  # a string where the schema says number
    config = target_config(braze, tmp_path, max_rejected_ratio=0.5)
    result = run_lines(
        config, encoded([schema_message(), *customers(2), bad, state("s")]), tmp_path
    )
    assert result.returncode == 0, result.stderr
    (rejected,) = [
        json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()
    ]
    assert rejected["input_line"] == 4
    assert len(rejected["run_id"]) == 12
    assert rejected["rejected_at"].endswith("+00:00")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["run_id"] == rejected["run_id"]


def test_a_rejected_record_without_identifier_is_named_by_its_line_in_the_summary(braze, tmp_path):
    nameless = {"type": "RECORD", "stream": "customer_attributes", "record": {"peak_segment": "x"}}
    config = target_config(braze, tmp_path, max_rejected_ratio=0.5)
    result = run_lines(
        config, encoded([schema_message(), *customers(2), nameless, state("s")]), tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert b"INVALID_RECORD: 1 (e.g. line 4)" in result.stderr
