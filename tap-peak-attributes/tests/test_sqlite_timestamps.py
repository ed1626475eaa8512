"""Timestamps stored as text, NULL rows, future rows and the look-back window."""

from __future__ import annotations

import datetime as dt
import logging

from tap_peak_attributes import streams
from tap_peak_attributes.incremental import LAST_ID_KEY

TABLE = "CREATE TABLE customer_attributes (customer_id TEXT, score REAL, updated_at TEXT)"
INSERT = "INSERT INTO customer_attributes VALUES (:id, 1.0, :ts)"


def _state(value: str, last_id: str | None) -> dict:
    bookmark = {"replication_key": "updated_at", "replication_key_value": value}
    if last_id is not None:
        bookmark[LAST_ID_KEY] = last_id
    return {"bookmarks": {"customer_attributes": bookmark}}


def test_sqlite_text_timestamps_with_a_space_are_not_skipped_after_an_iso_bookmark(
    sqlite_url, run_tap, execute
):
    # Textually '2024-01-01 05:00:00' < '2024-01-01T04:30:00...' (' ' < 'T'): a plain
    # SQL comparison, as singer-sdk's SQLStream does, would silently skip these rows.
    execute(sqlite_url, TABLE)
    rows = [
        {"id": "a", "ts": "2024-01-01 04:00:00"},
        {"id": "b", "ts": "2024-01-01 05:00:00"},
        {"id": "c", "ts": "2024-01-01T05:15:00Z"},
        {"id": "d", "ts": "2024-01-01 07:30:00+02:00"},  # 05:30 UTC
        {"id": "e", "ts": "2024-01-01 04:30:00"},  # tie with the bookmark, id after it
    ]
    execute(sqlite_url, INSERT, params=rows)
    run = run_tap(
        {"sqlalchemy_url": sqlite_url},
        _state("2024-01-01T04:30:00.000000+00:00", "d"),
    )
    assert [(r["customer_id"], r["updated_at"]) for r in run.records()] == [
        ("e", "2024-01-01T04:30:00.000000+00:00"),
        ("b", "2024-01-01T05:00:00.000000+00:00"),
        ("c", "2024-01-01T05:15:00.000000+00:00"),
        ("d", "2024-01-01T05:30:00.000000+00:00"),
    ]


def test_bookmark_written_in_another_iso_format_is_understood(sqlite_url, run_tap, execute):
    execute(sqlite_url, TABLE)
    execute(sqlite_url, INSERT, params=[{"id": "a", "ts": "2024-01-01 05:00:00"}])
    assert (
        run_tap({"sqlalchemy_url": sqlite_url}, _state("2024-01-01T06:00:00+01:00", "a")).ids()
        == []
    )
    assert run_tap({"sqlalchemy_url": sqlite_url}, _state("2024-01-01T04:59:59Z", None)).ids() == [
        "a"
    ]


def test_rows_with_null_id_or_updated_at_are_counted_in_one_warning(
    sqlite_url, run_tap, execute, caplog
):
    execute(sqlite_url, TABLE)
    execute(
        sqlite_url,
        INSERT,
        params=[
            {"id": "a", "ts": "2024-01-01 05:00:00"},
            {"id": None, "ts": "2024-01-01 05:00:00"},
            {"id": "b", "ts": None},
            {"id": "c", "ts": "not a time"},
        ],
    )
    with caplog.at_level(logging.WARNING):
        run = run_tap({"sqlalchemy_url": sqlite_url})
    assert run.ids() == ["a"]
    warnings = [r.getMessage() for r in caplog.records if "NULL" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].startswith("3 rows of customer_attributes")


def test_future_dated_rows_wait_for_a_run_after_their_time(
    sqlite_url, run_tap, execute, monkeypatch
):
    now = dt.datetime.now(dt.UTC)
    execute(sqlite_url, TABLE)
    execute(
        sqlite_url,
        INSERT,
        params=[
            {"id": "past", "ts": (now - dt.timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S")},
            {"id": "future", "ts": (now + dt.timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S")},
        ],
    )
    first = run_tap({"sqlalchemy_url": sqlite_url})
    assert first.ids() == ["past"]
    monkeypatch.setattr(streams, "utc_now", lambda: now + dt.timedelta(days=2))
    assert run_tap({"sqlalchemy_url": sqlite_url}, first.final_state).ids() == ["future"]


def test_lookback_window_catches_late_rows_without_moving_the_bookmark_back(
    sqlite_url, run_tap, execute
):
    execute(sqlite_url, TABLE)
    execute(sqlite_url, INSERT, params=[{"id": "a", "ts": "2024-01-01 10:00:00"}])
    config = {"sqlalchemy_url": sqlite_url}
    first = run_tap(config)
    # A row lands late, stamped before the bookmark.
    execute(sqlite_url, INSERT, params=[{"id": "late", "ts": "2024-01-01 09:55:00"}])
    assert run_tap(config, first.final_state).ids() == []
    looked_back = run_tap({**config, "lookback_window_minutes": 10}, first.final_state)
    assert looked_back.ids() == ["late", "a"]
    assert looked_back.final_state == first.final_state


def test_start_date_limits_the_first_run(sqlite_url, run_tap, execute):
    execute(sqlite_url, TABLE)
    execute(
        sqlite_url,
        INSERT,
        params=[
            {"id": "old", "ts": "2023-06-01 00:00:00"},
            {"id": "new", "ts": "2024-06-01 00:00:00"},
        ],
    )
    run = run_tap({"sqlalchemy_url": sqlite_url, "start_date": "2024-01-01T00:00:00Z"})
    assert run.ids() == ["new"]
