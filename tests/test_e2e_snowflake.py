"""`meltano run` from a Snowflake warehouse (the fakesnow emulator's server) into Braze.

The tap runs in Meltano's own plugin venv, with the client set its `snowflake` extra pins,
and reaches the emulator through a plain `snowflake://` URL in
`TAP_PEAK_ATTRIBUTES_SQLALCHEMY_URL`, as a user's would. The expected profiles are read
from the emulator with the Snowflake connector directly, independently of the tap.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pipeline_harness import mismatches, sandbox_attributes, summarise
from snowflake_emulator import (
    LEGACY_URL_PARAMS,
    SnowflakeEmulator,
    start_snowflake_emulator,
    stop_snowflake_emulator,
)

pytestmark = pytest.mark.e2e

CUSTOMERS = 150
CHANGES = 10
DATABASE = "PEAK_E2E"
MODEL_RUN_1 = "2026-11-21 06:00:00"


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[SnowflakeEmulator]:
    started = start_snowflake_emulator(tmp_path / "fakesnow.log")
    yield started
    stop_snowflake_emulator(started)


def seed_warehouse(emulator: SnowflakeEmulator) -> None:
    """Model run 1 for every customer, in PUBLISH, with unquoted (UPPER-case) names."""
    rows = ", ".join(
        f"('C{n:07d}', {round(n / CUSTOMERS, 4)}, '{'high' if n % 4 == 0 else 'low'}', "
        f"{n * 21}.{n % 100:02d}, {n % 9}, {'TRUE' if n % 5 == 0 else 'FALSE'}, "
        f"'{json.dumps({'top': [f'product_{n % 12}'], 'score': n % 10 / 10})}', "
        f"'{MODEL_RUN_1}')"
        for n in range(1, CUSTOMERS + 1)
    )
    emulator.execute(
        None,
        f"CREATE DATABASE {DATABASE}",
        f"CREATE SCHEMA {DATABASE}.PUBLISH",
        f"CREATE TABLE {DATABASE}.PUBLISH.CUSTOMER_ATTRIBUTES (CUSTOMER_ID VARCHAR(16), "
        "CHURN_PROBABILITY FLOAT, CHURN_RISK VARCHAR(8), LIFETIME_VALUE NUMBER(38,2), "
        "ORDERS_LAST_YEAR NUMBER(38,0), IS_HIGH_VALUE BOOLEAN, NEXT_BEST_PRODUCTS VARIANT, "
        "UPDATED_AT TIMESTAMP_NTZ)",
        f"INSERT INTO {DATABASE}.PUBLISH.CUSTOMER_ATTRIBUTES SELECT column1, column2, column3, "
        "column4, column5, column6, PARSE_JSON(column7), column8::TIMESTAMP_NTZ "
        f"FROM VALUES {rows}",
    )


def model_run(emulator: SnowflakeEmulator, customers: list[str]) -> None:
    """A later model run changing `customers`, stamped just before the next sync starts."""
    at = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30)).strftime("%Y-%m-%d %H:%M:%S")
    ids = ", ".join(f"'{c}'" for c in customers)
    emulator.execute(
        None,
        f"UPDATE {DATABASE}.PUBLISH.CUSTOMER_ATTRIBUTES SET CHURN_RISK = 'high', "
        f"LIFETIME_VALUE = LIFETIME_VALUE + 100, UPDATED_AT = '{at}' "
        f"WHERE CUSTOMER_ID IN ({ids})",
    )


def expected_profiles(emulator: SnowflakeEmulator) -> dict[str, dict[str, Any]]:
    """What Braze should hold per customer, read from the warehouse with the connector.

    Attribute keys: `peak_` + the lower-case column name; numbers as Braze stores them
    (NUMBER(38,0) whole, the rest floats), VARIANT parsed; NULL is no attribute.
    """
    (rows,) = emulator.execute(
        None,
        "SELECT CUSTOMER_ID, CHURN_PROBABILITY, CHURN_RISK, LIFETIME_VALUE, ORDERS_LAST_YEAR, "
        f"IS_HIGH_VALUE, NEXT_BEST_PRODUCTS FROM {DATABASE}.PUBLISH.CUSTOMER_ATTRIBUTES",
    )
    names = ("churn_probability", "churn_risk", "lifetime_value", "orders_last_year")
    names += ("is_high_value", "next_best_products")
    profiles = {}
    for customer, *values in rows:
        attributes = {}
        for name, stored in zip(names, values, strict=True):
            if stored is None:
                continue
            value = stored
            if isinstance(stored, Decimal):
                value = float(stored)
            elif name == "next_best_products":
                value = json.loads(stored)
            attributes[f"peak_{name}"] = value
        profiles[customer] = attributes
    return profiles


def test_meltano_run_from_snowflake_sends_every_customer_then_nothing_then_the_changed(
    emulator, start_sandbox, make_pipeline
):
    seed_warehouse(emulator)
    sandbox = start_sandbox()
    pipeline = make_pipeline(
        sandbox,
        settings={
            "TAP_PEAK_ATTRIBUTES_SQLALCHEMY_URL": emulator.url(DATABASE),
            # snowflake-sqlalchemy takes host/protocol from a URL only with this opt-in;
            # a real account's URL needs neither.
            LEGACY_URL_PARAMS: "1",  # the emulator's URL names its host and port
        },
    )

    first = pipeline.run()

    assert first.returncode == 0, first.describe()
    expected = expected_profiles(emulator)
    assert len(expected) == CUSTOMERS
    problems = mismatches(expected, sandbox_attributes(sandbox))
    assert not problems, summarise(problems)
    assert pipeline.bookmark("customer_attributes") == (
        "2026-11-21T06:00:00.000000+00:00",
        f"C{CUSTOMERS:07d}",
    )

    requests_before = sandbox.stats()["requests"]
    second = pipeline.run()

    assert second.returncode == 0, second.describe()
    assert sandbox.stats()["requests"] == requests_before
    assert pipeline.report()["records_in"] == 0

    changed = [f"C{n:07d}" for n in range(7, CUSTOMERS, CUSTOMERS // CHANGES)][:CHANGES]
    model_run(emulator, changed)
    log_before = len(sandbox.requests_log())
    third = pipeline.run()

    assert third.returncode == 0, third.describe()
    assert pipeline.report()["records_in"] == CHANGES
    assert sum(entry["objects"] for entry in sandbox.requests_log()[log_before:]) == CHANGES
    after = expected_profiles(emulator)
    problems = mismatches(after, sandbox_attributes(sandbox))
    assert not problems, summarise(problems)
    assert pipeline.bookmark("customer_attributes")[1] == changed[-1]
