"""Peak's connections API, served like Peak does by a local HTTP server."""

from __future__ import annotations

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
