"""target-braze behind a third-party tap: MeltanoLabs tap-postgres, users and events."""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from pipeline_harness import (
    MELTANO,
    PROJECT_ROOT,
    PROJECT_SYS_DIR,
    postgres_server_url,
    same_value,
    summarise,
)

pytestmark = pytest.mark.e2e

TAP_POSTGRES = "tap-postgres"
SEED = 7
USERS = 60
EVENTS = 150
PLANS = ("free", "pro", "team", None)
EVENT_NAMES = ("signed_in", "invited_teammate", "upgraded_plan", "exported_report")
SOURCES = ("web", "ios", "android")
START = dt.datetime(2026, 11, 1, 8, 0, tzinfo=dt.UTC)


def _install_tap_postgres() -> None:
    if (PROJECT_SYS_DIR / "extractors" / TAP_POSTGRES / "venv").is_dir():
        return
    installed = subprocess.run(
        [MELTANO, "install", "--plugin-type", "extractor", TAP_POSTGRES],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr


@dataclass
class AppDatabase:
    """A fresh schema with `app_users` and `app_events`, and the rows written to it."""

    url: sa.URL
    schema: str
    users: list[dict[str, Any]]
    events: list[dict[str, Any]]


def _app_rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rng = random.Random(SEED)
    users = []
    for n in range(1, USERS + 1):
        users.append(
            {
                "user_id": f"app-user-{n:03d}",
                "email": f"user{n:03d}@example.com",
                "plan": rng.choice(PLANS),
                "seats": rng.randint(1, 50),
                "monthly_spend": Decimal(rng.randint(0, 99_999)) / 100,
                "is_trial": rng.random() < 0.3,
                "signed_up_at": START - dt.timedelta(days=rng.randint(1, 400)),
            }
        )
    events = []
    for n in range(1, EVENTS + 1):
        events.append(
            {
                "event_id": n,
                "user_id": rng.choice(users)["user_id"],
                "event_name": rng.choice(EVENT_NAMES),
                "occurred_at": START + dt.timedelta(minutes=rng.randint(0, 40_000)),
                "source": rng.choice(SOURCES),
                "amount": Decimal(rng.randint(0, 5_000)) / 100,
            }
        )
    return users, events


@pytest.fixture
def app_database() -> Iterator[AppDatabase]:
    url = sa.make_url(postgres_server_url())
    schema = "e2e_reuse_" + uuid.uuid4().hex[:10]
    users, events = _app_rows()
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
        connection.execute(
            f'CREATE TABLE "{schema}".app_users (user_id text PRIMARY KEY, email text, '
            "plan text, seats integer, monthly_spend numeric(10, 2), is_trial boolean, "
            "signed_up_at timestamptz)"
        )
        connection.execute(
            f'CREATE TABLE "{schema}".app_events (event_id integer PRIMARY KEY, '
            "user_id text NOT NULL, event_name text NOT NULL, occurred_at timestamptz NOT NULL, "
            "source text, amount numeric(10, 2))"
        )
        with connection.cursor() as cursor:
            cursor.executemany(
                f'INSERT INTO "{schema}".app_users VALUES (%(user_id)s, %(email)s, %(plan)s, '
                "%(seats)s, %(monthly_spend)s, %(is_trial)s, %(signed_up_at)s)",
                users,
            )
            cursor.executemany(
                f'INSERT INTO "{schema}".app_events VALUES (%(event_id)s, %(user_id)s, '
                "%(event_name)s, %(occurred_at)s, %(source)s, %(amount)s)",
                events,
            )
    try:
        yield AppDatabase(url, schema, users, events)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


def tap_postgres_settings(db: AppDatabase) -> dict[str, str]:
    """tap-postgres's settings for the test schema of `db`."""
    return tap_postgres_schema_settings(db.url, db.schema)


def tap_postgres_schema_settings(url: sa.URL, schema: str) -> dict[str, str]:
    """tap-postgres's settings reading only `schema` of the database at `url`."""
    return {
        "TAP_POSTGRES_HOST": url.host or "127.0.0.1",
        "TAP_POSTGRES_PORT": str(url.port or 5432),
        "TAP_POSTGRES_USER": url.username or "postgres",
        # tap-postgres 0.10.0 insists on a password; the test server trusts loopback
        # connections and never asks for it.
        "TAP_POSTGRES_PASSWORD": url.password or "unused-with-trust-auth",
        "TAP_POSTGRES_DATABASE": url.database or "postgres",
        "TAP_POSTGRES_FILTER_SCHEMAS": json.dumps([schema]),
    }


def _instant(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC)
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(dt.UTC)


def _expected_user(user: dict[str, Any]) -> dict[str, Any]:
    """Custom attributes Braze should hold: every column but the identifier and email."""
    expected = {
        "plan": user["plan"],
        "seats": float(user["seats"]),
        "monthly_spend": float(user["monthly_spend"]),
        "is_trial": user["is_trial"],
        "signed_up_at": user["signed_up_at"],
    }
    return {k: v for k, v in expected.items() if v is not None}


def _differences(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    problems = []
    for key in sorted(expected.keys() | actual.keys()):
        if key not in actual or key not in expected:
            problems.append(f"{key}: expected {expected.get(key)!r}, got {actual.get(key)!r}")
        elif isinstance(expected[key], dt.datetime):
            if _instant(actual[key]) != expected[key]:
                problems.append(f"{key}: {actual[key]!r} != {expected[key].isoformat()}")
        elif not same_value(expected[key], actual[key]):
            problems.append(f"{key}: {actual[key]!r} != {expected[key]!r}")
    return problems


@pytest.mark.parametrize("batch", [False, True], ids=["records", "sdk-batch-files"])
def test_postgres_users_and_events_arrive_in_braze_through_target_braze(
    app_database, start_sandbox, make_pipeline, tmp_path, batch
):
    _install_tap_postgres()
    db = app_database
    users_stream = f"{db.schema}-app_users"
    events_stream = f"{db.schema}-app_events"
    sandbox = start_sandbox()
    pipeline = make_pipeline(
        sandbox,
        tap=TAP_POSTGRES,
        settings={
            **tap_postgres_settings(db),
            # singer-sdk's own BATCH writer: gzipped JSON lines, read by target-braze.
            **(
                {
                    "TAP_POSTGRES_BATCH_CONFIG": json.dumps(
                        {
                            "encoding": {"format": "jsonl", "compression": "gzip"},
                            "storage": {"root": (tmp_path / "sdk-batches").as_uri()},
                        }
                    )
                }
                if batch
                else {}
            ),
            "TARGET_BRAZE_STREAM_MAPPINGS": json.dumps(
                {
                    users_stream: {
                        "object_type": "attributes",
                        "identifier_property": "user_id",
                    },
                    events_stream: {
                        "object_type": "events",
                        "identifier_property": "user_id",
                        "event_name_property": "event_name",
                        "time_property": "occurred_at",
                    },
                }
            ),
        },
    )

    result = pipeline.run()

    assert result.returncode == 0, result.describe()
    # Users: one profile each, email as Braze's standard field, the rest custom attributes.
    profiles = {p["external_id"]: p for p in sandbox.profiles()}
    assert profiles.keys() == {u["user_id"] for u in db.users}
    problems = []
    for user in db.users:
        profile = profiles[user["user_id"]]
        if profile.get("email") != user["email"]:
            problems.append(f"{user['user_id']}: email {profile.get('email')!r}")
        custom = profile.get("custom_attributes") or {}
        problems += [f"{user['user_id']}: {p}" for p in _differences(_expected_user(user), custom)]
    assert not problems, summarise(problems)
    # Events: each row exactly once, with its name, time and remaining columns as properties.
    recorded = sandbox.events()
    assert len(recorded) == EVENTS
    by_event_id = {}
    for event in recorded:
        by_event_id.setdefault(event["properties"]["event_id"], []).append(event)
    assert sorted(by_event_id) == [e["event_id"] for e in db.events]
    for row in db.events:
        (event,) = by_event_id[row["event_id"]]
        assert event["external_id"] == row["user_id"], event
        assert event["name"] == row["event_name"], event
        assert _instant(event["time"]) == row["occurred_at"], event
        expected_properties = {
            "event_id": float(row["event_id"]),
            "source": row["source"],
            "amount": float(row["amount"]),
        }
        assert not _differences(expected_properties, event["properties"]), event
    report = pipeline.report()
    assert report["outcome"] == "success"
    assert report["records_in"] == USERS + EVENTS
    assert report["rejected"] == 0
    manifests = re.search(r"(\d+) batch manifests", result.output)
    assert manifests is not None, result.describe()
    if batch:  # the records came in singer-sdk's files, deleted once settled
        assert int(manifests.group(1)) >= 2, result.describe()
        assert not list((tmp_path / "sdk-batches").rglob("*.gz"))
    else:
        assert int(manifests.group(1)) == 0
