"""The delivery ledger through `meltano run`: Braze gets each change once, and only changes."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import test_e2e_reuse
from pipeline_harness import (
    WIDE_TABLE,
    copy_sample_warehouse,
    expected_profiles,
    mismatches,
    model_run,
    sandbox_attributes,
    summarise,
)
from test_e2e_reuse import TAP_POSTGRES, _install_tap_postgres, tap_postgres_settings

pytestmark = pytest.mark.e2e
app_database = test_e2e_reuse.app_database  # the fixture: a fresh schema on the test server


def changed_values(before: dict[str, dict], after: dict[str, dict]) -> int:
    """Attribute values that differ between two warehouse snapshots (a removal counts)."""
    count = 0
    for customer in before.keys() | after.keys():
        old, new = before.get(customer, {}), after.get(customer, {})
        count += sum(1 for key in old.keys() | new.keys() if old.get(key) != new.get(key))
    return count


def restamp_unchanged(warehouse: Path, customers: int) -> dt.datetime:
    """Rewrite `customers` rows with their own values and a new updated_at (as Peak does)."""
    at = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=1)
    with sqlite3.connect(warehouse) as connection:
        connection.execute(
            f"UPDATE {WIDE_TABLE} SET updated_at = ? WHERE customer_id IN "
            f"(SELECT customer_id FROM {WIDE_TABLE} ORDER BY customer_id LIMIT ?)",
            (at.strftime("%Y-%m-%d %H:%M:%S"), customers),
        )
    return at


def test_a_model_run_sends_one_data_point_per_value_that_really_changed(
    start_sandbox, make_pipeline, tmp_path
):
    warehouse = copy_sample_warehouse(tmp_path / "warehouse.sqlite")
    sandbox = start_sandbox()
    pipeline = make_pipeline(sandbox, warehouse)
    assert pipeline.run().returncode == 0
    before = expected_profiles(warehouse)
    points_before = sandbox.stats()["data_points"]
    model_run(warehouse, changes=100, seed=5)
    after = expected_profiles(warehouse)
    really_changed = changed_values(before, after)
    assert really_changed > 0

    result = pipeline.run()

    assert result.returncode == 0, result.describe()
    assert sandbox.stats()["data_points"] - points_before == really_changed
    problems = mismatches(after, sandbox_attributes(sandbox))
    assert not problems, summarise(problems)


def test_an_identical_rewrite_sends_no_request_and_still_moves_the_bookmark(
    start_sandbox, make_pipeline, tmp_path
):
    warehouse = copy_sample_warehouse(tmp_path / "warehouse.sqlite")
    sandbox = start_sandbox()
    pipeline = make_pipeline(sandbox, warehouse)
    assert pipeline.run().returncode == 0
    requests = sandbox.stats()["requests"]
    bookmark = pipeline.bookmark()
    restamp_unchanged(warehouse, 100)

    result = pipeline.run()

    assert result.returncode == 0, result.describe()
    assert sandbox.stats()["requests"] == requests
    assert pipeline.bookmark() != bookmark
    report = pipeline.report()
    assert (report["records_in"], report["unchanged"], report["data_points"]) == (100, 100, 0)


def test_full_refresh_alone_sends_nothing_and_with_full_resync_sends_everything(
    start_sandbox, make_pipeline, tmp_path
):
    warehouse = copy_sample_warehouse(tmp_path / "warehouse.sqlite")
    sandbox = start_sandbox()
    pipeline = make_pipeline(sandbox, warehouse)
    assert pipeline.run().returncode == 0
    every_value = sandbox.stats()["data_points"]

    refreshed = pipeline.run(
        run_options=("--full-refresh",)
    )  # meltano resets the tap's bookmark only

    assert refreshed.returncode == 0, refreshed.describe()
    assert sandbox.stats()["data_points"] == every_value
    resynced = pipeline.run(
        run_options=("--full-refresh",), extra_env={"TARGET_BRAZE_FULL_RESYNC": "true"}
    )
    assert resynced.returncode == 0, resynced.describe()
    assert sandbox.stats()["data_points"] == 2 * every_value


@pytest.mark.parametrize("keyed", [True, False], ids=["key-properties", "no-key-properties"])
def test_events_reach_braze_once_across_a_failed_run_its_fix_and_a_full_re_emit(
    app_database,
    start_sandbox,
    make_pipeline,
    keyed,
):
    _install_tap_postgres()
    db = app_database
    users, events = f"{db.schema}-app_users", f"{db.schema}-app_events"
    victim = db.events[3]["user_id"]
    victims_events = sum(1 for e in db.events if e["user_id"] == victim)
    sandbox = start_sandbox(errors={victim: "BLACKLISTED_EXTERNAL_USER_ID"})
    maps = {} if keyed else {events: {"__key_properties__": []}}
    pipeline = make_pipeline(
        sandbox,
        tap=TAP_POSTGRES,
        settings={
            **tap_postgres_settings(db),
            "TARGET_BRAZE_STREAM_MAPS": json.dumps(maps),
            "TARGET_BRAZE_STREAM_MAPPINGS": json.dumps(
                {
                    users: {"identifier_property": "user_id"},
                    events: {
                        "object_type": "events",
                        "identifier_property": "user_id",
                        "event_name_property": "event_name",
                        "time_property": "occurred_at",
                    },
                }
            ),
        },
    )
    failed = pipeline.run()
    assert failed.returncode != 0  # the victim's user and events were rejected
    assert len(sandbox.events()) == len(db.events) - victims_events
    sandbox.configure(errors={})  # fixed in Braze

    fixed = pipeline.run()
    re_emitted = pipeline.run()

    assert fixed.returncode == 0, fixed.describe()
    assert re_emitted.returncode == 0, re_emitted.describe()
    recorded = sandbox.events()
    assert len(recorded) == len(db.events)
    assert sorted(e["properties"]["event_id"] for e in recorded) == [
        float(e["event_id"]) for e in db.events
    ]
    assert pipeline.report()["duplicates"] == len(db.events)


@pytest.fixture
def postgres_ledger(app_database) -> Iterator[str]:
    """A fresh PostgreSQL database for a ledger, on the test server; dropped afterwards."""
    name = f"e2e_ledger_{uuid.uuid4().hex[:10]}"
    conninfo = app_database.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield app_database.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_two_workspaces_share_one_postgresql_ledger_and_each_gets_every_change(
    start_sandbox, make_pipeline, tmp_path, postgres_ledger
):
    warehouse = copy_sample_warehouse(tmp_path / "warehouse.sqlite")
    settings = {"TARGET_BRAZE_LEDGER_URL": postgres_ledger}
    first, second = start_sandbox(), start_sandbox(api_key="other-workspace-key")
    one = make_pipeline(first, warehouse, settings=settings)
    two = make_pipeline(second, warehouse, settings=settings)
    assert one.run().returncode == 0
    assert two.run().returncode == 0
    model_run(warehouse, changes=50, seed=9)

    for pipeline in (one, two):
        result = pipeline.run()
        assert result.returncode == 0, result.describe()

    expected = expected_profiles(warehouse)
    for sandbox in (first, second):
        problems = mismatches(expected, sandbox_attributes(sandbox))
        assert not problems, summarise(problems)
    assert first.stats()["data_points"] == second.stats()["data_points"]
