"""`change_thresholds`: a number is sent once it moved far enough from the value Braze holds.

The target's CLI against the sandbox, three runs on one ledger; what Braze holds is read
back from the sandbox.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from braze_target_harness import (
    error_lines,
    record,
    run_target,
    schema_message,
    state,
    target_config,
)

PROPERTIES = {
    "customer_id": {"type": "string"},
    "updated_at": {"type": "string", "format": "date-time"},
    "churn": {"type": ["number", "null"]},
    "ltv": {"type": ["number", "null"]},
    "visits": {"type": ["integer", "null"]},
    "segment": {"type": ["string", "null"]},
}
THRESHOLDS = {"ltv": 5, "*": 0.02}


def _run(braze: Any, tmp_path: Path, rows: dict[str, dict[str, Any]], **settings: Any) -> Any:
    config = target_config(
        braze,
        tmp_path,
        stream_mappings={"customer_attributes": {"change_thresholds": THRESHOLDS}},
        **settings,
    )
    messages = [
        schema_message(properties=PROPERTIES),
        *(record(customer, **values) for customer, values in rows.items()),
        state("end"),
    ]
    run = run_target(config, messages, tmp_path)
    assert run.returncode == 0, run.stderr
    return json.loads((tmp_path / "report.json").read_text())


def _held(braze: Any) -> dict[str, dict[str, Any]]:
    return {
        p["external_id"]: p["custom_attributes"] for p in braze.profiles() if p.get("external_id")
    }


def test_numbers_are_sent_once_they_moved_a_threshold_from_what_braze_holds(braze, tmp_path):
    first = {
        "u1": {"churn": 0.50, "ltv": 100.0, "visits": 7, "segment": "a"},
        "u2": {"churn": 0.50, "ltv": 100.0, "visits": 7, "segment": "a"},
    }
    report = _run(braze, tmp_path, first)
    assert report["data_points"] == 8

    # Small moves: u1's churn by 0.01 (< 0.02), ltv by 3 (< 5), visits by 0 -> not sent.
    # u2's text changed: only that is sent, its small number moves are held back.
    second = {
        "u1": {"churn": 0.51, "ltv": 103.0, "visits": 7, "segment": "a"},
        "u2": {"churn": 0.51, "ltv": 103.0, "visits": 7, "segment": "b"},
    }
    report = _run(braze, tmp_path, second)
    assert report["unchanged"] == 1
    assert report["data_points"] == 1
    held = _held(braze)
    assert held["u1"] == first["u1"]
    assert held["u2"] == {**first["u2"], "segment": "b"}

    # The moves add up against Braze's value: churn is now 0.02 from 0.50 -> sent; ltv 4
    # from 100 -> still held; visits moved by 1 (>= 0.02, a whole number) -> sent.
    third = {
        "u1": {"churn": 0.52, "ltv": 104.0, "visits": 8, "segment": "a"},
        "u2": {"churn": 0.52, "ltv": 105.0, "visits": 7, "segment": "b"},
    }
    report = _run(braze, tmp_path, third)
    assert report["data_points"] == 2 + 2
    held = _held(braze)
    assert held["u1"] == {"churn": 0.52, "ltv": 100.0, "visits": 8, "segment": "a"}
    assert held["u2"] == {"churn": 0.52, "ltv": 105.0, "visits": 7, "segment": "b"}


def test_full_resync_sends_every_value_whatever_the_thresholds(braze, tmp_path):
    _run(braze, tmp_path, {"u1": {"churn": 0.50, "ltv": 100.0, "visits": 7, "segment": "a"}})
    moved = {"u1": {"churn": 0.51, "ltv": 101.0, "visits": 7, "segment": "a"}}
    report = _run(braze, tmp_path, moved, full_resync=True)
    assert report["data_points"] == 4
    assert _held(braze)["u1"] == moved["u1"]


def test_a_threshold_that_is_not_a_number_or_names_no_property_is_one_line(braze, tmp_path):
    for thresholds, expected in (
        ({"churn": -1}, "change_thresholds.churn is -1 (in stream_mappings.customer_attributes)"),
        ({"churn": "big"}, "change_thresholds.churn: 'big' is not a number"),
        ({"churnn": 0.1}, "stream 'customer_attributes' has no property 'churnn' for "),
    ):
        config = target_config(
            braze,
            tmp_path,
            stream_mappings={"customer_attributes": {"change_thresholds": thresholds}},
        )
        run = run_target(config, [schema_message(properties=PROPERTIES)], tmp_path)
        assert run.returncode != 0
        (line,) = error_lines(run.stderr)
        assert expected in line, line
