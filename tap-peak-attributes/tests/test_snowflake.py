"""The Snowflake path, end to end: snowflake-sqlalchemy and the Snowflake connector against
the fakesnow emulator's server, through a `snowflake://` URL exactly as a user gives one.

Tables are created and changed with the Snowflake connector itself, in Snowflake SQL with
unquoted (so UPPER-case) names, in schema PUBLISH; the tap is configured in lower case.
Where the emulator differs from Snowflake, `test_dialects.py` pins the real behaviour and
the README lists the difference ("Snowflake: known limits").
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from decimal import Decimal

import pytest
from tap_peak_attributes.tap import TapPeakAttributes

MODEL_RUN_1 = "2026-11-21 06:00:00"
MODEL_RUN_1_UTC = "2026-11-21T06:00:00.000000+00:00"
WIDE_COLUMNS = (
    "CUSTOMER_ID VARCHAR(16), CHURN_PROBABILITY FLOAT, CHURN_RISK VARCHAR(8), "
    "LIFETIME_VALUE NUMBER(38,2), ORDERS_LAST_YEAR NUMBER(38,0), IS_HIGH_VALUE BOOLEAN, "
    "NEXT_BEST_PRODUCTS VARIANT, UPDATED_AT TIMESTAMP_NTZ"
)
LONG_COLUMNS = (
    "CUSTOMER_ID VARCHAR(16), ATTRIBUTE_NAME VARCHAR(64), ATTRIBUTE_VALUE VARCHAR(256), "
    "UPDATED_AT TIMESTAMP_NTZ"
)


@dataclass(frozen=True)
class Customer:
    """One customer's row in the wide table, and what the tap must emit for it."""

    number: int

    @property
    def id(self) -> str:
        return f"C{self.number:07d}"

    @property
    def churn_probability(self) -> float:
        return round((self.number * 37 % 1000) / 1000, 4)

    @property
    def lifetime_value(self) -> Decimal:
        return Decimal(f"{self.number * 13}.{self.number % 100:02d}")

    @property
    def products(self) -> dict:
        return {"top": ["backpack", f"p{self.number}"], "score": 0.5}

    def values_sql(self, at: str) -> str:
        return (
            f"('{self.id}', {self.churn_probability}, 'low', {self.lifetime_value}, "
            f"{self.number % 7}, {'TRUE' if self.number % 3 == 0 else 'FALSE'}, "
            f"'{json.dumps(self.products)}', '{at}')"
        )


def customers(count: int) -> list[Customer]:
    return [Customer(n) for n in range(1, count + 1)]


def seed(emulator, database: str, count: int, at: str = MODEL_RUN_1) -> list[Customer]:
    """Model run 1: the wide table and its long twin (three attributes per customer)."""
    people = customers(count)
    wide_rows = ", ".join(c.values_sql(at) for c in people)
    long_rows = ", ".join(
        f"('{c.id}', '{name}', '{value}', '{at}')"
        for c in people
        for name, value in (
            ("churn_probability", c.churn_probability),
            ("churn_risk", "low"),
            ("lifetime_value", c.lifetime_value),
        )
    )
    emulator.execute(
        database,
        f"CREATE TABLE PUBLISH.CUSTOMER_ATTRIBUTES ({WIDE_COLUMNS})",
        f"CREATE TABLE PUBLISH.CUSTOMER_ATTRIBUTE_CHANGES ({LONG_COLUMNS})",
        # Snowflake takes no PARSE_JSON in a VALUES list: INSERT ... SELECT ... FROM VALUES.
        "INSERT INTO PUBLISH.CUSTOMER_ATTRIBUTES SELECT column1, column2, column3, column4, "
        "column5, column6, PARSE_JSON(column7), column8::TIMESTAMP_NTZ "
        f"FROM VALUES {wide_rows}",
        "INSERT INTO PUBLISH.CUSTOMER_ATTRIBUTE_CHANGES SELECT column1, column2, column3, "
        f"column4::TIMESTAMP_NTZ FROM VALUES {long_rows}",
    )
    return people


def model_run(emulator, database: str, changed: list[str]) -> str:
    """A later model run changing `changed`: wide rows rewritten, long rows added.

    Stamped a minute ago: the tap leaves rows stamped after its sync started for later.
    """
    at = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).strftime("%Y-%m-%d %H:%M:%S")
    ids = ", ".join(f"'{c}'" for c in changed)
    long_rows = ", ".join(f"('{c}', 'churn_risk', 'high', '{at}')" for c in changed)
    emulator.execute(
        database,
        f"UPDATE PUBLISH.CUSTOMER_ATTRIBUTES SET CHURN_RISK = 'high', UPDATED_AT = '{at}' "
        f"WHERE CUSTOMER_ID IN ({ids})",
        "INSERT INTO PUBLISH.CUSTOMER_ATTRIBUTE_CHANGES SELECT column1, column2, column3, "
        f"column4::TIMESTAMP_NTZ FROM VALUES {long_rows}",
    )
    return at


def both_shapes(url: str, **settings) -> dict:
    """Lower-case names in the settings for UPPER-case tables in schema PUBLISH."""
    return {
        "sqlalchemy_url": url,
        "schema": "publish",
        "streams": [
            {"name": "customer_attributes", "table": "customer_attributes"},
            {
                "name": "attribute_changes",
                "table": "customer_attribute_changes",
                "shape": "long",
                "attribute_types": {"lifetime_value": "number", "churn_probability": "number"},
            },
        ],
        **settings,
    }


def one_error_line(run) -> str:
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    errors = [
        line for line in run.stderr.splitlines() if line.startswith("tap-peak-attributes: error:")
    ]
    assert len(errors) == 1, run.stderr
    return errors[0]


# --- reading the two shapes -----------------------------------------------------------


def test_wide_and_long_tables_in_publish_are_read_with_lower_case_settings(
    snowflake_emulator, snowflake_database, run_tap
):
    people = seed(snowflake_emulator, snowflake_database, 5)

    run = run_tap(both_shapes(snowflake_emulator.url(snowflake_database)))

    wide = run.records("customer_attributes")
    assert [r["customer_id"] for r in wide] == [c.id for c in people]
    first = wide[0]
    assert first == {
        "customer_id": "C0000001",
        "updated_at": MODEL_RUN_1_UTC,
        "peak_churn_probability": 0.037,
        "peak_churn_risk": "low",
        "peak_lifetime_value": 13.01,
        "peak_orders_last_year": 1,
        "peak_is_high_value": False,
        "peak_next_best_products": {"top": ["backpack", "p1"], "score": 0.5},
    }
    long = run.records("attribute_changes")
    assert [r["customer_id"] for r in long] == [c.id for c in people]
    assert long[0] == {
        "customer_id": "C0000001",
        "updated_at": MODEL_RUN_1_UTC,
        "peak_churn_probability": 0.037,
        "peak_churn_risk": "low",
        "peak_lifetime_value": 13.01,
    }


@pytest.mark.parametrize("stream", ["customer_attributes", "attribute_changes"])
def test_second_run_sends_nothing_and_a_third_exactly_the_ten_changed_customers(
    snowflake_emulator, snowflake_database, run_tap, stream
):
    seed(snowflake_emulator, snowflake_database, 60)
    config = both_shapes(snowflake_emulator.url(snowflake_database))
    first = run_tap(config)
    assert len(first.records(stream)) == 60

    second = run_tap(config, first.final_state)
    assert second.records() == []
    assert second.final_state == first.final_state

    changed = [f"C{n:07d}" for n in (3, 7, 11, 19, 23, 31, 37, 41, 53, 59)]
    at = model_run(snowflake_emulator, snowflake_database, changed)
    third = run_tap(config, second.final_state)

    records = third.records(stream)
    assert [r["customer_id"] for r in records] == changed
    stamp = (
        dt.datetime.fromisoformat(at).replace(tzinfo=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
    )
    assert {r["updated_at"] for r in records} == {stamp}
    assert {r["peak_churn_risk"] for r in records} == {"high"}
    if stream == "attribute_changes":
        # Only the attribute that changed is sent (each one is a billed data point).
        assert {tuple(sorted(r)) for r in records} == {
            ("customer_id", "peak_churn_risk", "updated_at")
        }
    bookmark = third.final_state["bookmarks"][stream]
    assert (bookmark["replication_key_value"], bookmark["replication_key_last_id"]) == (
        stamp,
        "C0000059",
    )


def test_run_interrupted_inside_a_group_sharing_one_updated_at_resumes_without_loss_or_repeat(
    snowflake_emulator, snowflake_database, run_tap
):
    people = seed(snowflake_emulator, snowflake_database, 40)
    config = {
        "sqlalchemy_url": snowflake_emulator.url(snowflake_database),
        "streams": [{"name": "customer_attributes", "table": "CUSTOMER_ATTRIBUTES"}],
        "state_message_frequency": 7,
    }
    full = run_tap(config)
    # The run "dies" right after its third STATE: what came later was never confirmed.
    delivered, checkpoint, states = [], None, 0
    for message in full.messages:
        if message["type"] == "RECORD":
            delivered.append(message["record"]["customer_id"])
        elif message["type"] == "STATE":
            states += 1
            if states == 3:
                checkpoint = message["value"]
                break
    assert checkpoint is not None
    bookmark = checkpoint["bookmarks"]["customer_attributes"]
    # Inside the group: all 40 rows share model run 1's updated-at.
    assert bookmark["replication_key_value"] == MODEL_RUN_1_UTC
    assert bookmark["replication_key_last_id"] == delivered[-1]
    assert 0 < len(delivered) < len(people)

    resumed = run_tap(config, checkpoint)

    sent = delivered + resumed.ids()
    assert sent == [c.id for c in people]


# --- timestamps ---------------------------------------------------------------------

#: One instant per customer, written as NTZ (UTC wall clock) and with offsets for TZ/LTZ.
INSTANTS = {
    "C1": ("2026-10-31 17:00:00", "2026-11-01 06:00:00+13:00", "2026-10-31T17:00:00"),
    "C2": ("2026-10-31 16:30:00", "2026-10-31 08:30:00-08:00", "2026-10-31T16:30:00"),
}


def _insert_times(emulator, database: str, rows: dict[str, tuple[str, str, str]]) -> None:
    values = ", ".join(
        f"('{c}', '{ntz}', '{zoned}', '{zoned}')" for c, (ntz, zoned, _) in rows.items()
    )
    emulator.execute(
        database,
        "INSERT INTO PUBLISH.SCORE_TIMES SELECT column1, column2::TIMESTAMP_NTZ, "
        f"column3::TIMESTAMP_TZ, column4::TIMESTAMP_LTZ FROM VALUES {values}",
    )


UPDATED_AT_COLUMNS = ("changed_ntz", "changed_tz", "changed_ltz")


def test_ntz_tz_and_ltz_timestamps_are_emitted_in_utc_under_a_non_utc_session_time_zone(
    snowflake_emulator, snowflake_database, run_cli, monkeypatch
):
    snowflake_emulator.execute(
        snowflake_database,
        "CREATE TABLE PUBLISH.SCORE_TIMES (CUSTOMER_ID VARCHAR, CHANGED_NTZ TIMESTAMP_NTZ, "
        "CHANGED_TZ TIMESTAMP_TZ, CHANGED_LTZ TIMESTAMP_LTZ)",
    )
    _insert_times(snowflake_emulator, snowflake_database, INSTANTS)
    # Both the session (the URL asks for Auckland) and the tap's own machine are not UTC.
    monkeypatch.setenv("TZ", "Pacific/Auckland")
    url = snowflake_emulator.url(snowflake_database, timezone="Pacific/Auckland")
    # One stream per kind of timestamp as the replication key, in one run of the tap each.
    config = {
        "sqlalchemy_url": url,
        "streams": [
            {"name": column, "table": "score_times", "updated_at_column": column}
            for column in UPDATED_AT_COLUMNS
        ],
    }

    first = run_cli(config)

    assert first.returncode == 0, first.stderr
    for column in UPDATED_AT_COLUMNS:
        records = first.records(column)
        # Ordered by the instant, not by the wall-clock text.
        assert [r["customer_id"] for r in records] == ["C2", "C1"], column
        for record in records:
            utc = INSTANTS[record["customer_id"]][2] + ".000000+00:00"
            stamps = {v for k, v in record.items() if k != "customer_id"}
            assert stamps == {utc}, (column, record)

    second = run_cli(config, first.final_state)
    assert second.returncode == 0, second.stderr
    assert second.records() == []

    _insert_times(
        snowflake_emulator,
        snowflake_database,
        {"C3": ("2026-10-31 17:00:01", "2026-11-01 06:00:01+13:00", "")},
    )
    third = run_cli(config, second.final_state)
    assert third.returncode == 0, third.stderr
    for column in UPDATED_AT_COLUMNS:
        (record,) = third.records(column)
        assert record["customer_id"] == "C3", column
        assert record["updated_at"] == "2026-10-31T17:00:01.000000+00:00", column


# --- types --------------------------------------------------------------------------


TYPED_COLUMNS = {
    # column: (Snowflake type, class the emulator reflects, JSON Schema of the attribute)
    "a_float": ("FLOAT", "FLOAT", {"type": ["number", "null"]}),
    "a_number": ("NUMBER(38,2)", "_CUSTOM_DECIMAL", {"type": ["number", "null"]}),
    "a_whole": ("NUMBER(38,0)", "_CUSTOM_DECIMAL", {"type": ["integer", "null"]}),
    "a_integer": ("INTEGER", "_CUSTOM_DECIMAL", {"type": ["integer", "null"]}),
    "a_boolean": ("BOOLEAN", "BOOLEAN", {"type": ["boolean", "null"]}),
    "a_text": ("VARCHAR(100)", "VARCHAR", {"type": ["string", "null"]}),
    "a_date": ("DATE", "DATE", {"type": ["string", "null"], "format": "date"}),
    "a_ntz": (
        "TIMESTAMP_NTZ",
        "TIMESTAMP_NTZ",
        {"type": ["string", "null"], "format": "date-time"},
    ),
    "a_tz": ("TIMESTAMP_TZ", "TIMESTAMP_TZ", {"type": ["string", "null"], "format": "date-time"}),
    # The emulator reflects LTZ as TZ, OBJECT and ARRAY as VARIANT; what Snowflake reflects
    # is typed by test_dialects.py.
    "a_ltz": ("TIMESTAMP_LTZ", "TIMESTAMP_TZ", {"type": ["string", "null"], "format": "date-time"}),
    "a_variant": (
        "VARIANT",
        "VARIANT",
        {"type": ["object", "array", "string", "number", "boolean", "null"]},
    ),
    "a_object": (
        "OBJECT",
        "VARIANT",
        {"type": ["object", "array", "string", "number", "boolean", "null"]},
    ),
    "a_array": (
        "ARRAY",
        "VARIANT",
        {"type": ["object", "array", "string", "number", "boolean", "null"]},
    ),
}


def test_discovery_types_follow_the_types_the_emulator_reflects(
    snowflake_emulator, snowflake_database
):
    columns = ", ".join(f"{name.upper()} {kind}" for name, (kind, _, _) in TYPED_COLUMNS.items())
    snowflake_emulator.execute(
        snowflake_database,
        f"CREATE TABLE PUBLISH.TYPED (CUSTOMER_ID VARCHAR, UPDATED_AT TIMESTAMP_NTZ, {columns})",
    )
    config = {
        "sqlalchemy_url": snowflake_emulator.url(snowflake_database),
        "streams": [{"name": "typed", "table": "typed"}],
    }

    tap = TapPeakAttributes(config=config, parse_env_config=False)

    stream = tap.streams["typed"]
    reflected = {name.lower(): type(kind).__name__ for name, kind in stream.table.columns.items()}
    assert reflected == {
        "customer_id": "VARCHAR",
        "updated_at": "TIMESTAMP_NTZ",
        **{name: cls for name, (_, cls, _) in TYPED_COLUMNS.items()},
    }
    properties = stream.schema["properties"]
    assert properties == {
        "customer_id": {"type": ["string"]},
        "updated_at": {"type": ["string"], "format": "date-time"},
        **{f"peak_{name}": schema for name, (_, _, schema) in TYPED_COLUMNS.items()},
    }


def test_number_38_2_is_emitted_as_a_number_and_number_38_0_as_an_integer(
    snowflake_emulator, snowflake_database, run_cli
):
    seed(snowflake_emulator, snowflake_database, 3)
    config = {
        "sqlalchemy_url": snowflake_emulator.url(snowflake_database),
        "streams": [{"name": "c", "table": "customer_attributes"}],
    }

    run = run_cli(config)

    assert run.returncode == 0, run.stderr
    schema = next(m for m in run.messages if m["type"] == "SCHEMA")["schema"]["properties"]
    assert schema["peak_lifetime_value"]["type"] == ["number", "null"]
    assert schema["peak_orders_last_year"]["type"] == ["integer", "null"]
    # As the JSON a target reads: numbers, not strings; the integer without a fraction.
    values = [(r["peak_lifetime_value"], r["peak_orders_last_year"]) for r in run.records()]
    assert values == [(13.01, 1), (26.02, 2), (39.03, 3)]
    assert all(type(v[1]) is int for v in values)


def test_variant_attribute_is_emitted_as_a_json_object(
    snowflake_emulator, snowflake_database, run_cli
):
    seed(snowflake_emulator, snowflake_database, 2)
    snowflake_emulator.execute(
        snowflake_database,
        "UPDATE PUBLISH.CUSTOMER_ATTRIBUTES SET NEXT_BEST_PRODUCTS = NULL "
        "WHERE CUSTOMER_ID = 'C0000002'",
    )
    config = {
        "sqlalchemy_url": snowflake_emulator.url(snowflake_database),
        "streams": [{"name": "c", "table": "customer_attributes"}],
    }

    run = run_cli(config)

    assert run.returncode == 0, run.stderr
    products = [r["peak_next_best_products"] for r in run.records()]
    assert products == [{"top": ["backpack", "p1"], "score": 0.5}, None]


def test_a_long_table_s_variant_values_are_sent_as_the_values_they_hold(
    snowflake_emulator, snowflake_database, run_cli
):
    # Peak's long tables hold every attribute's value in one column: on Snowflake a VARIANT.
    values = [
        ("C0000001", "churn_risk", '"low"'),
        ("C0000001", "churn_probability", "0.25"),
        ("C0000001", "orders_last_year", "3"),
        ("C0000001", "is_high_value", "true"),
        ("C0000001", "next_best_product", '"backpack"'),
        ("C0000002", "churn_risk", '"high"'),
        ("C0000002", "churn_probability", "0.5"),
        ("C0000002", "orders_last_year", "12"),
        ("C0000002", "is_high_value", "false"),
        ("C0000002", "next_best_product", "null"),
    ]
    rows = ", ".join(f"('{c}', '{n}', '{v}', '{MODEL_RUN_1}')" for c, n, v in values)
    snowflake_emulator.execute(
        snowflake_database,
        "CREATE TABLE PUBLISH.SCORES (CUSTOMER_ID VARCHAR(16), ATTRIBUTE_NAME VARCHAR(64), "
        "ATTRIBUTE_VALUE VARIANT, UPDATED_AT TIMESTAMP_NTZ)",
        "INSERT INTO PUBLISH.SCORES SELECT column1, column2, PARSE_JSON(column3), "
        f"column4::TIMESTAMP_NTZ FROM VALUES {rows}",
    )
    config = {
        "sqlalchemy_url": snowflake_emulator.url(snowflake_database),
        "streams": [{"name": "scores", "table": "scores", "shape": "long"}],
    }

    run = run_cli(config)

    assert run.returncode == 0, run.stderr
    schema = next(m for m in run.messages if m["type"] == "SCHEMA")["schema"]["properties"]
    assert {name: schema[name]["type"][0] for name in schema if name.startswith("peak_")} == {
        "peak_churn_risk": "string",
        "peak_churn_probability": "number",
        "peak_orders_last_year": "integer",
        "peak_is_high_value": "boolean",
        "peak_next_best_product": "string",
    }
    records = {r["customer_id"]: r for r in run.records()}
    assert {k: v for k, v in records["C0000001"].items() if k.startswith("peak_")} == {
        "peak_churn_risk": "low",
        "peak_churn_probability": 0.25,
        "peak_orders_last_year": 3,
        "peak_is_high_value": True,
        "peak_next_best_product": "backpack",
    }
    assert records["C0000002"]["peak_churn_risk"] == "high"
    assert records["C0000002"]["peak_is_high_value"] is False
    assert records["C0000002"]["peak_next_best_product"] is None


# --- bad input ----------------------------------------------------------------------


def test_missing_table_is_one_line_listing_the_tables_of_the_schema(
    snowflake_emulator, snowflake_database, run_cli
):
    seed(snowflake_emulator, snowflake_database, 1)
    config = {
        "sqlalchemy_url": snowflake_emulator.url(snowflake_database),
        "streams": [{"name": "x", "table": "CHURN_SCORES"}],
    }

    line = one_error_line(run_cli(config, None, "--discover"))

    assert "table in schema publish 'CHURN_SCORES' not found" in line
    assert "available: customer_attribute_changes, customer_attributes" in line


def test_missing_column_of_an_upper_case_named_table_lists_its_columns(
    snowflake_emulator, snowflake_database, run_cli
):
    seed(snowflake_emulator, snowflake_database, 1)
    config = {
        "sqlalchemy_url": snowflake_emulator.url(snowflake_database),
        "schema": "PUBLISH",
        "streams": [{"name": "x", "table": "CUSTOMER_ATTRIBUTES", "id_column": "CUST_NO"}],
    }

    line = one_error_line(run_cli(config))

    assert "id_column: column of publish.customer_attributes 'CUST_NO' not found" in line
    assert "customer_id, is_high_value, lifetime_value" in line


def test_missing_schema_is_one_line_listing_the_schemas(
    snowflake_emulator, snowflake_database, run_cli
):
    seed(snowflake_emulator, snowflake_database, 1)
    config = {
        "sqlalchemy_url": snowflake_emulator.url(snowflake_database),
        "schema": "peak_outputs",
        "streams": [{"name": "x", "table": "customer_attributes"}],
    }

    line = one_error_line(run_cli(config))

    assert "schema 'peak_outputs' not found" in line
    assert "publish" in line


def test_url_endpoint_refused_by_the_dialect_is_one_line_without_the_password(
    snowflake_emulator, snowflake_database, run_cli, monkeypatch
):
    # Without snowflake-sqlalchemy's opt-in, `host`/`protocol` in the query are refused.
    monkeypatch.delenv("SNOWFLAKE_SQLALCHEMY_LEGACY_URL_PARAMS")
    url = snowflake_emulator.url(snowflake_database, password="Sn0w-S3cret")

    run = run_cli({"sqlalchemy_url": url})

    line = one_error_line(run)
    assert "cannot use snowflake://fake:***@fakesnow" in line
    assert "cannot be set via the URL" in line
    assert "Sn0w-S3cret" not in run.stderr


def test_unreachable_snowflake_is_one_line_without_the_password(run_cli, monkeypatch):
    monkeypatch.setenv("SNOWFLAKE_SQLALCHEMY_LEGACY_URL_PARAMS", "1")
    url = "snowflake://fake:Sn0w-S3cret@fakesnow/DB?host=127.0.0.1&port=1&protocol=http"

    run = run_cli({"sqlalchemy_url": url, "connect_timeout_seconds": 2})

    line = one_error_line(run)
    assert "cannot connect to the warehouse at snowflake://fake:***@fakesnow/DB" in line
    assert "Sn0w-S3cret" not in run.stderr
