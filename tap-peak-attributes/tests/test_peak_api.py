"""Peak's connections API, served like Peak does by a local HTTP server."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from tap_peak_attributes import peak_api, sample
from tap_peak_attributes.errors import TapPeakError
from werkzeug import Response

PATH = "/connections/api/v2/connections/credentials"
TOKEN = "eyJ-tenant-key-not-to-be-echoed"


def _serve(httpserver, answer: dict | None, status: int = 200) -> None:
    request = httpserver.expect_request(
        PATH, query_string="type=data-warehouse", headers={"Authorization": TOKEN}
    )
    if answer is None:
        request.respond_with_response(Response("Unauthorized", status=status))
    else:
        request.respond_with_json(answer, status=status)


def test_redshift_answer_is_used_to_read_the_warehouse(httpserver, postgres_url, run_tap):
    sample.generate(postgres_url, 7)
    url = sa.engine.make_url(postgres_url)
    _serve(
        httpserver,
        {
            "host": url.host,
            "port": url.port,
            "database": url.database,
            "user": url.username,
            "password": "ignored-by-trust-auth",
            "schema": "publish",
            "connectionString": f"postgresql://{url.username}@{url.host}:{url.port}/{url.database}",
            "dataWarehouseType": "amazon_redshift",
        },
    )
    run = run_tap({"peak_api_key": TOKEN, "peak_api_url": httpserver.url_for("/")})
    assert len(run.records()) == 7


def test_refused_token_names_the_setting_without_echoing_it(httpserver, run_cli):
    _serve(httpserver, None, status=401)
    run = run_cli({"peak_api_key": TOKEN, "peak_api_url": httpserver.url_for("/")})
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert TOKEN not in run.stderr
    errors = [line for line in run.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1
    assert "peak_api_key" in errors[0]
    assert "401" in errors[0]


def test_snowflake_answer_builds_a_quoted_url():
    url = peak_api.warehouse_url(
        {
            "host": "xy12345.eu-west-1.snowflakecomputing.com",
            "database": "ACME_DB",
            "schema": "PUBLISH",
            "warehouse": "ACME_WH",
            "role": "ACME_ROLE",
            "user": "acme@peak",
            "password": "p@ss:w/rd#1",
            "dataWarehouseType": "snowflake",
        }
    )
    assert url.drivername == "snowflake"
    assert url.host == "xy12345.eu-west-1"
    assert url.password == "p@ss:w/rd#1"
    assert url.query == {"warehouse": "ACME_WH", "role": "ACME_ROLE"}
    rendered = url.render_as_string(hide_password=False)
    assert rendered == (
        "snowflake://acme%40peak:p%40ss%3Aw%2Frd%231@xy12345.eu-west-1/ACME_DB/PUBLISH"
        "?role=ACME_ROLE&warehouse=ACME_WH"
    )
    assert sa.engine.make_url(rendered).password == "p@ss:w/rd#1"


def test_snowflake_oauth_token_goes_to_the_query_and_is_masked():
    from tap_peak_attributes.connector import mask_url

    url = peak_api.warehouse_url(
        {
            "host": "acme.snowflakecomputing.com",
            "database": "DB",
            "user": "svc",
            "accessToken": "oauth-secret-token",
            "dataWarehouseType": "snowflake",
        }
    )
    assert url.password is None
    assert url.query["authenticator"] == "oauth"
    assert url.query["token"] == "oauth-secret-token"
    assert "oauth-secret-token" not in mask_url(url)


def test_stage_selects_the_service_host():
    assert peak_api.base_url("prod") == "https://service.peak.ai"
    assert peak_api.base_url("beta") == "https://service.beta.peak.ai"


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:9"])
def test_plain_http_is_allowed_only_on_loopback(url):
    assert peak_api.base_url(override=url) == url


def test_plain_http_to_a_remote_host_is_refused():
    with pytest.raises(TapPeakError, match="https"):
        peak_api.base_url(override="http://service.peak.ai")


def test_unknown_warehouse_type_is_refused():
    with pytest.raises(TapPeakError, match="bigquery"):
        peak_api.warehouse_url({"dataWarehouseType": "bigquery"})


# --- Snowflake answers, served to the tap and followed to the emulator ----------------

OAUTH_TOKEN = "oauth-access-token-not-to-be-echoed"
SNOWFLAKE_PASSWORD = "peak-reader-pw-not-to-be-echoed"


def _snowflake_answer(emulator, database: str, *, oauth: bool, port: int | None = None) -> dict:
    """Peak's Snowflake answer, its connection string pointing at the emulator."""
    endpoint = f"host=127.0.0.1&port={port or emulator.port}&protocol=http"
    names = f"{database}/PUBLISH?{endpoint}&warehouse=PEAK_WH&role=PEAK_READER"
    answer = {
        "host": "fakesnow.snowflakecomputing.com",
        "database": database,
        "schema": "PUBLISH",
        "warehouse": "PEAK_WH",
        "role": "PEAK_READER",
        "user": "peak_reader",
        "dataWarehouseType": "snowflake",
    }
    if oauth:
        answer["accessToken"] = OAUTH_TOKEN
        answer["connectionString"] = f"snowflake://peak_reader@fakesnow/{names}&authenticator=oauth"
    else:
        answer["password"] = SNOWFLAKE_PASSWORD
        answer["connectionString"] = (
            f"snowflake://peak_reader:{SNOWFLAKE_PASSWORD}@fakesnow/{names}"
        )
    return answer


def _seed_snowflake(emulator, database: str, customers: int) -> None:
    rows = ", ".join(
        f"('C{n:07d}', 0.{n:04d}, '2026-11-21 06:00:00')" for n in range(1, customers + 1)
    )
    emulator.execute(
        database,
        "CREATE TABLE PUBLISH.CUSTOMER_ATTRIBUTES "
        "(CUSTOMER_ID VARCHAR, CHURN_PROBABILITY FLOAT, UPDATED_AT TIMESTAMP_NTZ)",
        "INSERT INTO PUBLISH.CUSTOMER_ATTRIBUTES SELECT column1, column2, "
        f"column3::TIMESTAMP_NTZ FROM VALUES {rows}",
    )


def test_snowflake_password_answer_is_used_to_read_the_emulator(
    httpserver, snowflake_emulator, snowflake_database, run_tap
):
    _seed_snowflake(snowflake_emulator, snowflake_database, 4)
    _serve(httpserver, _snowflake_answer(snowflake_emulator, snowflake_database, oauth=False))

    run = run_tap({"peak_api_key": TOKEN, "peak_api_url": httpserver.url_for("/")})

    assert run.ids() == ["C0000001", "C0000002", "C0000003", "C0000004"]
    assert run.records()[0]["peak_churn_probability"] == 0.0001


def test_snowflake_oauth_answer_is_used_and_the_token_never_appears_in_the_output(
    httpserver, snowflake_emulator, snowflake_database, run_cli
):
    _seed_snowflake(snowflake_emulator, snowflake_database, 3)
    _serve(httpserver, _snowflake_answer(snowflake_emulator, snowflake_database, oauth=True))

    run = run_cli({"peak_api_key": TOKEN, "peak_api_url": httpserver.url_for("/")})

    assert run.returncode == 0, run.stderr
    assert run.ids() == ["C0000001", "C0000002", "C0000003"]
    for secret in (OAUTH_TOKEN, TOKEN):
        assert secret not in run.stderr
        assert secret not in json.dumps(run.messages)


@pytest.mark.parametrize("oauth", [True, False], ids=["oauth", "password"])
def test_unreachable_snowflake_from_peak_is_one_line_without_any_secret(
    httpserver, snowflake_emulator, snowflake_database, run_cli, oauth
):
    answer = _snowflake_answer(snowflake_emulator, snowflake_database, oauth=oauth, port=1)
    _serve(httpserver, answer)

    run = run_cli(
        {
            "peak_api_key": TOKEN,
            "peak_api_url": httpserver.url_for("/"),
            "connect_timeout_seconds": 2,
        }
    )

    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, run.stderr
    assert "cannot connect to the warehouse at snowflake://peak_reader" in errors[0]
    for secret in (OAUTH_TOKEN, SNOWFLAKE_PASSWORD, TOKEN):
        assert secret not in run.stderr


def test_snowflake_endpoint_comes_from_the_connection_string_and_credentials_from_fields():
    url = peak_api.warehouse_url(
        {
            "host": "ignored.snowflakecomputing.com",
            "database": "DB",
            "user": "svc",
            "password": "p@ss",
            "connectionString": "snowflake://svc:stale@xy12345.privatelink/DB?host=h.example&protocol=https&port=8443",
            "dataWarehouseType": "snowflake",
        }
    )
    assert url.host == "xy12345.privatelink"
    assert url.password == "p@ss"
    assert url.query == {"host": "h.example", "port": "8443", "protocol": "https"}


@pytest.mark.parametrize(
    "connection_string",
    [
        "snowflake://acme@peak:p@ss:w/rd#1@xy12345.eu-west-1/ACME_DB",  # not URL-quoted
        "snowflake://u:p@ss@xy12345/DB",  # parses, but the host part is not an account
        "postgresql://u@h/db",
    ],
)
def test_snowflake_connection_string_that_does_not_parse_cleanly_falls_back_to_host(
    connection_string,
):
    url = peak_api.warehouse_url(
        {
            "host": "xy12345.eu-west-1.snowflakecomputing.com",
            "database": "ACME_DB",
            "user": "acme@peak",
            "password": "p@ss:w/rd#1",
            "connectionString": connection_string,
            "dataWarehouseType": "snowflake",
        }
    )
    assert url.host == "xy12345.eu-west-1"
    assert url.password == "p@ss:w/rd#1"
    assert url.query == {}
