"""Lost answers under `meltano run`: events and purchases reach Braze once, or are named.

A Braze that applies a request and loses its answer (the connection dropped after the
body was sent, a 502 after the apply) while MeltanoLabs' tap-postgres feeds target-braze
events and purchases, with and without a primary key. Then the same tables again after
Braze heals (tap-postgres reads them whole every run: a re-emit), then a release through
`meltano invoke target-braze:ledger-release` and one more run. Asserted on what the sandbox
holds and on the target's outputs, as a user would check them.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from pipeline_harness import MELTANO, PROJECT_ROOT, postgres_server_url
from test_e2e_reuse import TAP_POSTGRES, _install_tap_postgres, tap_postgres_schema_settings

pytestmark = pytest.mark.e2e

SEED = 19
ROWS = 120  # per table
START = dt.datetime(2026, 11, 1, 8, 0, tzinfo=dt.UTC)
# tables: (object type, with a primary key)
TABLES = {
    "events_keyed": ("events", True),
    "events_plain": ("events", False),
    "purchases_keyed": ("purchases", True),
    "purchases_plain": ("purchases", False),
}


@dataclass
class Schema:
    url: sa.URL
    name: str


@pytest.fixture
def app_schema() -> Iterator[Schema]:
    url = sa.make_url(postgres_server_url())
    name = "e2e_lost_" + uuid.uuid4().hex[:10]
    rng = random.Random(SEED)
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{name}"')
        for table, (_kind, keyed) in TABLES.items():
            key = " PRIMARY KEY" if keyed else ""
            connection.execute(
                f'CREATE TABLE "{name}".{table} (row_ref text{key}, user_id text NOT NULL, '
                "occurred_at timestamptz NOT NULL, amount numeric(10, 2), product text)"
            )
            rows = [
                {
                    "row_ref": f"{table}-{n:03d}",
                    "user_id": f"user-{rng.randint(1, 40):02d}",
                    "occurred_at": START + dt.timedelta(minutes=n),
                    "amount": Decimal(rng.randint(100, 9_999)) / 100,
                    "product": rng.choice(("gift-card", "voucher")),
                }
                for n in range(ROWS)
            ]
            with connection.cursor() as cursor:
                cursor.executemany(
                    f'INSERT INTO "{name}".{table} VALUES (%(row_ref)s, %(user_id)s, '
                    "%(occurred_at)s, %(amount)s, %(product)s)",
                    rows,
                )
    try:
        yield Schema(url, name)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{name}" CASCADE')


def mappings(schema: str) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = {}
    for table, (kind, _keyed) in TABLES.items():
        mapping: dict[str, Any] = {
            "object_type": kind,
            "identifier_property": "user_id",
            "time_property": "occurred_at",
        }
        if kind == "events":
            mapping["event_name"] = "order_scored"
        else:
            mapping |= {
                "product_id_property": "product",
                "price_property": "amount",
                "currency": "EUR",
            }
        result[f"{schema}-{table}"] = mapping
    return result


def delivered(sandbox: Any) -> Counter[str]:
    """How many copies of each row Braze holds, events and purchases alike."""
    copies: Counter[str] = Counter()
    for item in [*sandbox.events(), *sandbox.purchases()]:
        copies[item["properties"]["row_ref"]] += 1
    return copies


def this_runs_rejects(pipeline: Any) -> list[dict[str, Any]]:
    """The rejects of the latest run (the file keeps every run's, each with its run_id)."""
    run_id = pipeline.report()["run_id"]
    return [r for r in pipeline.rejects() if r["run_id"] == run_id]


def invoke(pipeline: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MELTANO, "invoke", *args],
        cwd=PROJECT_ROOT,
        env=pipeline.env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_lost_answers_duplicate_no_event_or_purchase_and_a_release_sends_each_once(
    app_schema, start_sandbox, make_pipeline
):
    _install_tap_postgres()
    url = app_schema.url
    # Braze applies every request, then loses 10% of the answers and answers 502 to
    # another 5%.
    sandbox = start_sandbox(fault_drop_after_apply=0.10, fault_5xx_after_apply=0.05, seed=SEED)
    pipeline = make_pipeline(
        sandbox,
        tap=TAP_POSTGRES,
        settings={
            **tap_postgres_schema_settings(url, app_schema.name),
            "TARGET_BRAZE_STREAM_MAPPINGS": json.dumps(mappings(app_schema.name)),
            # Small requests: enough of them for both faults to strike several times.
            "TARGET_BRAZE_MAX_OBJECTS_PER_REQUEST": "8",
            "TARGET_BRAZE_MAX_RETRIES": "10",
        },
    )
    every_row = {f"{table}-{n:03d}" for table in TABLES for n in range(ROWS)}

    first = pipeline.run()

    assert first.returncode == 0, first.describe()
    injected = sandbox.stats()["injected"]
    assert injected["drop_after_apply"] > 0, injected
    assert injected["5xx_after_apply"] > 0, injected
    copies = delivered(sandbox)
    assert set(copies.values()) == {1}, [r for r, n in copies.items() if n > 1]
    rejects = this_runs_rejects(pipeline)
    unknown = {r["record"]["row_ref"] for r in rejects}
    assert len(unknown) == len(rejects)
    assert all(r["error_type"] == "DELIVERY_UNKNOWN" for r in rejects)
    assert all(r["reason"].startswith("delivery unknown: ") for r in rejects)
    # Braze applied every request: the unknown ones are there too, and nothing else is
    # missing.
    assert unknown, "no answer was lost: the faults never hit an event or a purchase"
    assert set(copies) == every_row
    assert pipeline.report()["unknown"] == len(unknown)

    # Braze heals; tap-postgres emits every row again.
    sandbox.configure(fault_drop_after_apply=0.0, fault_5xx_after_apply=0.0)
    again = pipeline.run()

    assert again.returncode == 0, again.describe()
    assert delivered(sandbox) == copies
    rejects = this_runs_rejects(pipeline)
    assert {r["record"]["row_ref"] for r in rejects} == unknown
    assert all("an earlier run" in r["reason"] for r in rejects)

    # A person checked Braze, which (in this test) does hold them; a release is for the
    # ones it lacks, so here it makes the next run send each one a second time: exactly
    # one more copy of each released row, and of nothing else.
    listed = invoke(pipeline, "target-braze:ledger-unknown")
    assert listed.returncode == 0, listed.stderr
    assert f"{len(unknown):,}" in listed.stdout, listed.stdout
    released = invoke(pipeline, "target-braze:ledger-release", "--all", "--yes")
    assert released.returncode == 0, released.stdout + released.stderr
    assert f"released {len(unknown):,} events/purchases" in released.stdout

    last = pipeline.run()

    assert last.returncode == 0, last.describe()
    after = delivered(sandbox)
    assert {r: n - copies[r] for r, n in after.items() if n != copies[r]} == dict.fromkeys(
        unknown, 1
    )
    assert this_runs_rejects(pipeline) == []
    assert pipeline.report()["unknown"] == 0
