"""The e2e suite's own checks can fail: the expectations and comparisons, on small inputs."""

from __future__ import annotations

import sqlite3

from pipeline_harness import (
    mismatches,
    normalise_timestamp,
    read_warehouse,
    rows_up_to,
)


def _warehouse(tmp_path):
    path = tmp_path / "w.sqlite"
    connection = sqlite3.connect(path)
    connection.execute(
        "CREATE TABLE customer_attributes (customer_id VARCHAR(16), churn_probability FLOAT, "
        "churn_risk VARCHAR(8), lifetime_value NUMERIC(12, 2), is_high_value BOOLEAN, "
        "updated_at DATETIME)"
    )
    connection.executemany(
        "INSERT INTO customer_attributes VALUES (?, ?, ?, ?, ?, ?)",
        [
            ("C1", 0.25, "low", 3688, 1, "2026-11-21 06:00:00"),
            ("C2", 0.75, None, 12.5, 0, "2026-11-21 06:00:00"),
            ("C3", 0.5, "medium", 100.0, 0, "2026-11-28 06:00:00"),
        ],
    )
    connection.commit()
    connection.close()
    return path


def test_expected_profile_is_prefixed_typed_and_without_id_timestamp_or_nulls(tmp_path):
    rows = read_warehouse(_warehouse(tmp_path))

    assert rows["C1"].attributes == {
        "peak_churn_probability": 0.25,
        "peak_churn_risk": "low",
        "peak_lifetime_value": 3688.0,
        "peak_is_high_value": True,
    }
    assert rows["C1"].attributes["peak_is_high_value"] is True
    assert "peak_churn_risk" not in rows["C2"].attributes
    assert rows["C3"].updated_at == "2026-11-28 06:00:00.000000"


def test_bookmark_covers_rows_up_to_and_including_its_id_among_ties(tmp_path):
    rows = read_warehouse(_warehouse(tmp_path))

    covered = rows_up_to(rows, ("2026-11-21T06:00:00.000000+00:00", "C1"))

    assert [r.customer_id for r in covered] == ["C1"]
    assert rows_up_to(rows, None) == []
    everything = rows_up_to(rows, ("2026-11-28T06:00:00.000000+00:00", "C3"))
    assert len(everything) == 3


def test_comparison_flags_missing_extra_and_wrongly_typed_values():
    expected = {"C1": {"peak_a": 1.5, "peak_b": True, "peak_c": "x"}}

    assert mismatches(expected, {"C1": {"peak_a": 1.5, "peak_b": True, "peak_c": "x"}}) == []
    assert mismatches(expected, {"C1": {"peak_a": 1.5, "peak_b": 1, "peak_c": "x"}})
    assert mismatches(expected, {"C1": {"peak_a": 1.5000001, "peak_b": True, "peak_c": "x"}})
    assert mismatches(expected, {"C1": {"peak_a": 1.5, "peak_b": True}})
    assert mismatches(expected, {"C1": {"peak_a": 1.5, "peak_b": True, "peak_c": "x", "d": 1}})
    assert mismatches(expected, {})
    assert mismatches(expected, {"C1": expected["C1"], "C9": {}})
    assert not mismatches(expected, {"C1": expected["C1"], "C9": {}}, exact_population=False)
    # Integral numbers may come back as integers (Braze stores 3688.0 as 3688).
    assert mismatches({"C1": {"peak_v": 3688.0}}, {"C1": {"peak_v": 3688}}) == []


def test_timestamps_normalise_to_one_sortable_form():
    assert normalise_timestamp("2026-11-21 06:00:00") == "2026-11-21 06:00:00.000000"
    assert normalise_timestamp("2026-11-21T06:00:00.123000+00:00") == "2026-11-21 06:00:00.123000"
    assert normalise_timestamp("2026-11-21T06:00:00Z") == "2026-11-21 06:00:00.000000"
