"""Identifier case and column typing across SQLite, PostgreSQL and Snowflake."""

from __future__ import annotations

import datetime as dt
import gzip
import json
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from snowflake.sqlalchemy import custom_types as sf
from tap_peak_attributes import sample
from tap_peak_attributes.connector import (
    Warehouse,
    is_timezone_aware,
    json_schema_for,
    mask_url,
    resolve_name,
    value_converter,
)
from tap_peak_attributes.errors import TapPeakError


def test_config_names_match_snowflake_upper_case_names():
    assert resolve_name("customer_id", ["CUSTOMER_ID", "UPDATED_AT"], "column") == "CUSTOMER_ID"
    assert resolve_name("UPDATED_AT", ["customer_id", "updated_at"], "column") == "updated_at"


def test_an_exact_match_wins_over_case_variants():
    assert resolve_name("Id", ["ID", "Id", "id"], "column") == "Id"
    with pytest.raises(TapPeakError, match="ambiguous"):
        resolve_name("iD", ["ID", "id"], "column")


@pytest.mark.parametrize(
    ("sql_type", "expected"),
    [
        (sa.Integer(), ["integer", "null"]),
        (sa.BigInteger(), ["integer", "null"]),
        (sa.Numeric(12, 2), ["number", "null"]),
        (sa.Numeric(38, 0), ["integer", "null"]),
        (sa.Float(), ["number", "null"]),
        (sa.Boolean(), ["boolean", "null"]),
        (sa.String(10), ["string", "null"]),
        (sa.DateTime(), ["string", "null"]),
        (sf.TIMESTAMP_NTZ(), ["string", "null"]),
        (sf.TIMESTAMP_TZ(), ["string", "null"]),
        (sf.DECFLOAT(), ["number", "null"]),
    ],
)
def test_column_types_map_to_json_schema(sql_type, expected):
    assert json_schema_for(sql_type)["type"] == expected


@pytest.mark.parametrize("sql_type", [sa.DateTime(), sf.TIMESTAMP_NTZ(), sf.TIMESTAMP_LTZ()])
def test_timestamps_are_date_time(sql_type):
    assert json_schema_for(sql_type)["format"] == "date-time"


def test_postgres_discovery_types_and_mixed_case_config(postgres_url, run_tap):
    sample.generate(postgres_url, 3)
    config = {
        "sqlalchemy_url": postgres_url,
        "schema": "PUBLISH",
        "streams": [
            {
                "name": "attrs",
                "table": "Customer_Attributes",
                "id_column": "CUSTOMER_ID",
                "updated_at_column": "Updated_At",
                "exclude_attributes": ["PROPENSITY_HOME"],
            }
        ],
    }
    run = run_tap(config)
    schema = next(m for m in run.messages if m["type"] == "SCHEMA")["schema"]["properties"]
    assert schema["peak_lifetime_value"]["type"][0] == "number"
    assert schema["peak_is_high_value"]["type"][0] == "boolean"
    assert "peak_propensity_home" not in schema
    assert len(run.records()) == 3


def test_postgres_json_and_jsonb_columns_are_emitted_as_the_json_they_hold(
    postgres_url, run_tap, execute
):
    execute(
        postgres_url,
        "CREATE SCHEMA publish",
        "CREATE TABLE publish.customer_attributes (customer_id text, updated_at timestamptz, "
        "products jsonb, tags json, label jsonb)",
        "INSERT INTO publish.customer_attributes VALUES "
        """('C1', '2026-11-21 06:00:00+00', '{"top": ["a"], "n": 1}', '["x", "y"]', '"123"'), """
        "('C2', '2026-11-21 06:00:00+00', NULL, 'null', 'true')",
    )

    run = run_tap({"sqlalchemy_url": postgres_url})

    schema = next(m for m in run.messages if m["type"] == "SCHEMA")["schema"]["properties"]
    assert schema["peak_products"]["type"][:2] == ["object", "array"]
    assert schema["peak_tags"]["type"][:2] == ["object", "array"]
    records = {r["customer_id"]: r for r in run.records()}
    assert records["C1"]["peak_products"] == {"top": ["a"], "n": 1}
    assert records["C1"]["peak_tags"] == ["x", "y"]
    assert records["C1"]["peak_label"] == "123"  # a JSON string stays a string
    assert records["C2"]["peak_products"] is None
    assert records["C2"]["peak_tags"] is None
    assert records["C2"]["peak_label"] is True


@pytest.mark.parametrize("json_type", ["jsonb", "json"])
def test_a_long_table_s_json_values_are_sent_as_the_values_they_hold(
    postgres_url, run_tap, execute, json_type
):
    execute(
        postgres_url,
        "CREATE SCHEMA publish",
        f"CREATE TABLE publish.scores (customer_id text, attribute_name text, "
        f"attribute_value {json_type}, updated_at timestamptz)",
        "INSERT INTO publish.scores VALUES "
        """('C1', 'churn_risk', '"low"', '2026-11-21 06:00:00+00'), """
        "('C1', 'churn_probability', '0.25', '2026-11-21 06:00:00+00'), "
        "('C1', 'is_high_value', 'true', '2026-11-21 06:00:00+00')",
    )
    config = {
        "sqlalchemy_url": postgres_url,
        "streams": [{"name": "scores", "table": "scores", "shape": "long"}],
    }

    run = run_tap(config)

    (record,) = run.records()
    assert {k: v for k, v in record.items() if k.startswith("peak_")} == {
        "peak_churn_risk": "low",
        "peak_churn_probability": 0.25,
        "peak_is_high_value": True,
    }


def test_masking_hides_the_password_and_every_query_value():
    masked = mask_url(
        "snowflake://u:pw1@acct/db?token=tok1&warehouse=wh&proxy_password=pp1&sslpassword=sp1"
    )
    for secret in ("pw1", "tok1", "wh", "pp1", "sp1"):
        assert secret not in masked
    assert "warehouse=***" in masked


# --- Snowflake as it really behaves, where the fakesnow emulator differs ---------------
# (README, "Snowflake: known limits"). Each pins what real Snowflake and its client do.


def test_snowflake_object_and_array_columns_are_typed_object_and_array():
    # Snowflake reflects OBJECT and ARRAY as such; the emulator reflects both as VARIANT.
    assert json_schema_for(sf.OBJECT())["type"] == ["object", "null"]
    assert json_schema_for(sf.ARRAY())["type"] == ["array", "null"]
    assert "object" in json_schema_for(sf.VARIANT())["type"]


def test_snowflake_timestamp_ltz_is_an_instant_like_timestamp_tz():
    # Snowflake reflects TIMESTAMP_LTZ as such (the emulator: as TIMESTAMP_TZ), and the
    # bookmark is bound to it as an aware UTC instant, like TIMESTAMP_TZ.
    assert is_timezone_aware(sf.TIMESTAMP_LTZ())
    assert is_timezone_aware(sf.TIMESTAMP_TZ())
    assert not is_timezone_aware(sf.TIMESTAMP_NTZ())


def test_ltz_and_tz_values_as_snowflake_returns_them_are_emitted_in_utc():
    convert = value_converter({"type": ["string", "null"], "format": "date-time"})
    # LTZ: in the session's time zone (the emulator always answers in UTC).
    ltz = dt.datetime(2026, 11, 1, 6, 0, tzinfo=ZoneInfo("Pacific/Auckland"))
    # TZ: with the offset it was stored with (the emulator returns it in UTC).
    tz = dt.datetime(2026, 10, 31, 8, 30, tzinfo=dt.timezone(dt.timedelta(hours=-8)))
    # NTZ: naive, Peak's UTC wall clock.
    ntz = dt.datetime(2026, 10, 31, 17, 0)
    assert convert(ltz) == "2026-10-31T17:00:00.000000+00:00"
    assert convert(tz) == "2026-10-31T16:30:00.000000+00:00"
    assert convert(ntz) == "2026-10-31T17:00:00.000000+00:00"


def test_variant_text_as_snowflake_returns_it_is_parsed():
    # Snowflake's connector returns VARIANT/OBJECT/ARRAY as indented JSON text (the
    # emulator's is compact).
    convert = value_converter(json_schema_for(sf.VARIANT()))
    assert convert('{\n  "score": 0.5,\n  "top": [\n    "backpack"\n  ]\n}') == {
        "score": 0.5,
        "top": ["backpack"],
    }
    assert convert('"plain text"') == "plain text"
    assert convert(None) is None


def test_snowflake_login_asks_for_a_utc_session_even_when_the_url_names_another_zone(
    httpserver, monkeypatch
):
    # The emulator ignores the session time zone, so look at what the real connector
    # sends: Snowflake's login request, answered here by a stand-in that refuses it.
    monkeypatch.setenv("SNOWFLAKE_SQLALCHEMY_LEGACY_URL_PARAMS", "1")
    httpserver.expect_request("/session/v1/login-request", method="POST").respond_with_json(
        {"success": False, "code": "390100", "message": "refused by the test", "data": None}
    )
    url = (
        f"snowflake://u:pw@acct/DB?host=127.0.0.1&port={httpserver.port}&protocol=http"
        "&timezone=Pacific/Auckland"
    )
    warehouse = Warehouse(url, connect_timeout=5)

    with pytest.raises(TapPeakError, match="cannot connect"):
        warehouse.connect()

    request = httpserver.log[0][0]
    body = request.get_data()
    if request.headers.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    sent = json.loads(body)["data"]["SESSION_PARAMETERS"]
    assert sent["TIMEZONE"] == "UTC"
