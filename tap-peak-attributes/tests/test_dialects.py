"""Identifier case and column typing across SQLite, PostgreSQL and Snowflake."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from snowflake.sqlalchemy import custom_types as sf
from tap_peak_attributes import sample
from tap_peak_attributes.connector import json_schema_for, mask_url, resolve_name
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


def test_masking_hides_passwords_and_tokens():
    masked = mask_url("snowflake://u:pw1@acct/db?token=tok1&warehouse=wh")
    assert "pw1" not in masked
    assert "tok1" not in masked
    assert "warehouse=wh" in masked
