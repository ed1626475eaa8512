"""A schema-5 ledger, written by the release before schema 6, migrated and then used.

The schema-5 ledger is made by that release's own code (its `target_braze`, from
`SCHEMA_5_ARCHIVE`, run as a user would against the sandbox), in SQLite and in
PostgreSQL; then this release opens it, migrates it, and must send only what changed.
"""

from __future__ import annotations

import json
import sqlite3
import tarfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from braze_target_harness import (
    customers,
    libpq_url,
    run_target,
    schema_message,
    state,
    target_config,
)
from test_ledger import EVENTS_MAPPING, event_messages

# That release's package, as `git archive 341707d target-braze/target_braze` made it (main
# when schema 6 was written: the last release whose ledger is schema 5). Kept in the
# repository, so the test needs no git history (CI's checkout may be shallow).
SCHEMA_5_ARCHIVE = Path(__file__).parent / "data" / "target_braze-schema-5.tar.gz"


def schema_5_package(into: Path) -> Path:
    """That release's `target_braze` package, unpacked under `into` (for PYTHONPATH)."""
    with tarfile.open(SCHEMA_5_ARCHIVE) as tar:
        tar.extractall(into, filter="data")
    return into / "target-braze"


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    else:
        yield str(request.getfixturevalue("postgres_url"))


def schema_version(url: str) -> str:
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    else:
        with psycopg.connect(libpq_url(url)) as conn:
            row = conn.execute(
                "SELECT value FROM ledger_meta WHERE key = 'schema_version'"
            ).fetchone()
    return str(row[0])


def messages(changed: int) -> list[dict]:
    """300 customers, the first `changed` of them with a new segment, and 40 events."""
    people = customers(300)
    for message in people[:changed]:
        message["record"]["peak_segment"] = "at_risk"
    return [
        schema_message(),
        *people,
        state("end"),
        *event_messages("keyed_events", True, range(40)),
    ]


def test_a_schema_5_ledger_is_migrated_and_then_only_changes_are_sent(
    braze, tmp_path: Path, ledger_url: str
) -> None:
    old = schema_5_package(tmp_path / "schema5")
    config = target_config(
        braze,
        tmp_path,
        ledger_url=ledger_url,
        stream_mappings=EVENTS_MAPPING,
        identifier_property="customer_id",
    )
    first = run_target(config, messages(0), tmp_path, env={"PYTHONPATH": str(old)})
    assert first.returncode == 0, first.stderr
    assert schema_version(ledger_url) == "5"
    points_before = braze.stats()["data_points"]
    events_before = len(braze.events())

    run = run_target(config, messages(10), tmp_path)

    assert run.returncode == 0, run.stderr
    assert schema_version(ledger_url) == "6"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["data_points"] == 10  # the ten new segments, nothing else
    assert report["duplicates"] == 40  # the schema-5 ledger's event identities hold
    assert braze.stats()["data_points"] == points_before + 10
    assert len(braze.events()) == events_before == 40

    again = run_target(config, messages(10), tmp_path)

    assert again.returncode == 0, again.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["data_points"] == 0
    assert report["objects_sent"] == 0
