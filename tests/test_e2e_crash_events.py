"""kill -9 under `meltano run` duplicates no event: 20,000 events, four kills, one full run.

MeltanoLabs' tap-postgres reads two event tables (one with a primary key, one without)
whole on every run, so every run re-emits every event: only target-braze's ledger keeps
them from going twice. Before each trial 5,000 new events arrive; the run is killed (its
whole process group, SIGKILL) once the sandbox answered K of its requests. Whatever was in
flight at the kill is of unknown delivery: the next runs name it and never send it. At the
end Braze holds each event at most once, and every event it lacks is named as delivery
unknown. Decisions come from the sandbox's progress, never from the clock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from pipeline_harness import RUN_TIMEOUT_SECONDS, postgres_server_url
from test_e2e_crash import _answered, _wait_until_sandbox_quiet
from test_e2e_reuse import TAP_POSTGRES, _install_tap_postgres, tap_postgres_schema_settings

pytestmark = pytest.mark.e2e

SEED = 20261207
TRIALS = 4
NEW_EVENTS_PER_TRIAL = 5_000  # over both tables: at least 66 requests of 75
# Killed once K of the run's requests were answered, K from this range: at least 36 new
# requests are left, each held 40-80 ms by the sandbox with at most 2 in flight, so the
# run cannot finish within 0.7 s of reaching K while the test polls every 10 ms.
KILL_AFTER_ANSWERED = (1, 30)
LATENCY_MS = (40, 80)
MAX_IN_FLIGHT = 2
POLL_SECONDS = 0.01
TABLES = {"events_keyed": True, "events_plain": False}


@dataclass
class EventTables:
    url: sa.URL
    schema: str
    conninfo: str
    written: int = 0

    def add(self, count: int, rng: random.Random) -> None:
        """`count` new events, alternating between the two tables."""
        start = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
        rows: dict[str, list[dict[str, Any]]] = {table: [] for table in TABLES}
        for n in range(self.written, self.written + count):
            table = list(TABLES)[n % 2]
            rows[table].append(
                {
                    "row_ref": f"event-{n:05d}",
                    "user_id": f"user-{rng.randint(1, 2_000):04d}",
                    "occurred_at": start + dt.timedelta(seconds=n),
                }
            )
        with psycopg.connect(self.conninfo, autocommit=True) as connection:
            for table, values in rows.items():
                with connection.cursor() as cursor:
                    cursor.executemany(
                        f'INSERT INTO "{self.schema}".{table} VALUES (%(row_ref)s, '
                        "%(user_id)s, %(occurred_at)s)",
                        values,
                    )
        self.written += count


@pytest.fixture
def event_tables() -> Iterator[EventTables]:
    url = sa.make_url(postgres_server_url())
    schema = "e2e_crash_events_" + uuid.uuid4().hex[:10]
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
        for table, keyed in TABLES.items():
            key = " PRIMARY KEY" if keyed else ""
            connection.execute(
                f'CREATE TABLE "{schema}".{table} (row_ref text{key}, user_id text NOT NULL, '
                "occurred_at timestamptz NOT NULL)"
            )
    try:
        yield EventTables(url, schema, conninfo)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _kill_after(sandbox: Any, process: subprocess.Popen[bytes], answered_needed: int) -> None:
    """kill -9 the run's process group once the sandbox answered `answered_needed` more."""
    answered_before = _answered(sandbox)
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS  # a safety net only
    try:
        while process.poll() is None:
            if _answered(sandbox) - answered_before >= answered_needed:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "the run neither progressed nor ended"
            time.sleep(POLL_SECONDS)
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_kill_9_at_random_moments_under_meltano_duplicates_no_event(
    event_tables, start_sandbox, make_pipeline, tmp_path: Path
):
    _install_tap_postgres()
    rng = random.Random(SEED)
    url = event_tables.url
    sandbox = start_sandbox(latency_ms=LATENCY_MS, seed=SEED)
    mapping = {
        "object_type": "events",
        "identifier_property": "user_id",
        "event_name": "model_scored",
        "time_property": "occurred_at",
    }
    pipeline = make_pipeline(
        sandbox,
        tap=TAP_POSTGRES,
        settings={
            **tap_postgres_schema_settings(url, event_tables.schema),
            "TARGET_BRAZE_STREAM_MAPPINGS": json.dumps(
                {f"{event_tables.schema}-{table}": mapping for table in TABLES}
            ),
            "TARGET_BRAZE_MAX_CONCURRENT_REQUESTS": str(MAX_IN_FLIGHT),
        },
    )
    log_path = tmp_path / "killed-runs.log"
    named_unknown: set[str] = set()

    for trial in range(TRIALS):
        event_tables.add(NEW_EVENTS_PER_TRIAL, rng)
        _wait_until_sandbox_quiet(sandbox)
        # After a kill -9 Meltano believes the previous run is still going: --force.
        process = pipeline.start(force=True, log_path=log_path)
        _kill_after(sandbox, process, rng.randint(*KILL_AFTER_ANSWERED))
        assert process.returncode == -signal.SIGKILL, (trial, process.returncode)
        copies = Counter(e["properties"]["row_ref"] for e in sandbox.events())
        twice = sorted(ref for ref, n in copies.items() if n > 1)
        assert not twice, f"trial {trial}: {len(twice)} events twice, e.g. {twice[:5]}"
        # The rejects of the killed runs (each run's lines are complete ones).
        named_unknown |= {
            r["record"]["row_ref"]
            for r in pipeline.rejects()
            if r["error_type"] == "DELIVERY_UNKNOWN"
        }

    _wait_until_sandbox_quiet(sandbox)
    final = pipeline.run(force=True)

    assert final.returncode == 0, final.describe()
    copies = Counter(e["properties"]["row_ref"] for e in sandbox.events())
    assert set(copies.values()) == {1}, sorted(r for r, n in copies.items() if n > 1)[:5]
    run_id = pipeline.report()["run_id"]
    named_unknown |= {
        r["record"]["row_ref"]
        for r in pipeline.rejects()
        if r["error_type"] == "DELIVERY_UNKNOWN" and r["run_id"] == run_id
    }
    every = {f"event-{n:05d}" for n in range(event_tables.written)}
    absent = every - set(copies)
    # Every event Braze lacks is named; the named ones are those in flight at a kill (in
    # four kills, with two requests in flight, at least one was).
    assert named_unknown, "no kill caught a request in flight"
    assert absent <= named_unknown, sorted(absent - named_unknown)[:5]
    assert pipeline.report()["unknown"] == len(named_unknown)
    assert len(copies) + len(absent) == TRIALS * NEW_EVENTS_PER_TRIAL
