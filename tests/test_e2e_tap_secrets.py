"""The tap's secrets from variables Meltano passes to the plugin but never writes to disk.

`meltano invoke --dump=config` prints exactly the config file Meltano writes to
`.meltano/run/tap-peak-attributes/` for a run; the run itself shows the tap read the
warehouse (or Peak's key) from the variable its `*_env` setting names.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from pipeline_harness import (
    MELTANO,
    PROJECT_ROOT,
    expected_profiles,
    generate_warehouse,
    mismatches,
    postgres_server_url,
    sandbox_attributes,
    summarise,
)
from werkzeug import Response

pytestmark = pytest.mark.e2e

PEAK_PATH = "/connections/api/v2/connections/credentials"


def dumped_config(env: dict[str, str]) -> dict:
    """The config file Meltano would write for the tap, as `--dump=config` prints it."""
    done = subprocess.run(
        [MELTANO, "invoke", "--dump=config", "tap-peak-attributes"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    start = done.stdout.index("{")
    loaded: dict = json.loads(done.stdout[start:])
    return loaded


def test_the_warehouse_url_is_read_from_peak_warehouse_url_which_meltano_never_writes(
    start_sandbox, make_pipeline, tmp_path
):
    # A path no other setting could hold: if it appears in the config, Meltano wrote it.
    marker = f"only-in-the-variable-{uuid.uuid4().hex}"
    (tmp_path / marker).mkdir()
    warehouse = generate_warehouse(tmp_path / marker / "warehouse.sqlite", 40, seed=3)
    sandbox = start_sandbox()
    pipeline = make_pipeline(
        sandbox, None, settings={"PEAK_WAREHOUSE_URL": f"sqlite:///{warehouse}"}
    )

    config = dumped_config(pipeline.env())
    result = pipeline.run()

    assert marker not in json.dumps(config)
    assert "sqlalchemy_url" not in config
    assert config["sqlalchemy_url_env"] == "PEAK_WAREHOUSE_URL"
    assert result.returncode == 0, result.describe()
    expected = expected_profiles(warehouse)
    assert len(expected) == 40  # not the bundled sample's 1,200
    problems = mismatches(expected, sandbox_attributes(sandbox))
    assert not problems, summarise(problems)


@pytest.fixture
def postgres_warehouse() -> Iterator[sa.URL]:
    from tap_peak_attributes import sample

    server = sa.make_url(postgres_server_url())
    name = f"e2e_tap_key_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = server.set(database=name)
    try:
        sample.generate(url.render_as_string(hide_password=False), 25, seed=8)
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def test_the_peak_key_is_read_from_the_variable_peak_api_key_env_names(
    start_sandbox, make_pipeline, httpserver, postgres_warehouse
):
    key = f"peak-key-{uuid.uuid4().hex}"
    url = postgres_warehouse
    httpserver.expect_request(
        PEAK_PATH, query_string="type=data-warehouse", headers={"Authorization": key}
    ).respond_with_json(
        {
            "host": url.host,
            "port": url.port,
            "database": url.database,
            "user": url.username,
            "password": "trust-auth-ignores-it",
            "schema": "publish",
            "dataWarehouseType": "amazon_redshift",
        }
    )
    httpserver.expect_request(PEAK_PATH).respond_with_response(Response("no", status=401))
    sandbox = start_sandbox()
    pipeline = make_pipeline(
        sandbox,
        None,
        settings={
            "TAP_PEAK_ATTRIBUTES_PEAK_API_KEY_ENV": "ACME_PEAK_KEY",
            "TAP_PEAK_ATTRIBUTES_PEAK_API_URL": httpserver.url_for("/"),
            "ACME_PEAK_KEY": key,
        },
    )

    config = dumped_config(pipeline.env())
    result = pipeline.run()

    assert key not in json.dumps(config)
    assert config["peak_api_key_env"] == "ACME_PEAK_KEY"
    assert result.returncode == 0, result.describe()
    assert key not in result.output
    assert len(sandbox_attributes(sandbox)) == 25


def test_a_url_without_its_password_is_all_meltano_writes_the_password_stays_in_pgpassword(
    start_sandbox, make_pipeline, postgres_warehouse, tmp_path
):
    # The loopback test server trusts every login, so this shows only that Meltano passes
    # PGPASSWORD to the tap and writes it nowhere; tap-peak-attributes/tests/
    # test_credentials.py shows libpq using it against a server that asks for it.
    password = f"pw-{uuid.uuid4().hex}"
    sandbox = start_sandbox()
    pipeline = make_pipeline(
        sandbox,
        None,
        settings={
            "TAP_PEAK_ATTRIBUTES_SQLALCHEMY_URL": postgres_warehouse.render_as_string(
                hide_password=False
            ),
            "PGPASSWORD": password,
        },
    )

    config = dumped_config(pipeline.env())
    result = pipeline.run()

    assert password not in json.dumps(config)
    assert result.returncode == 0, result.describe()
    assert len(sandbox_attributes(sandbox)) == 25
    assert not any(
        password.encode() in path.read_bytes()
        for path in Path(pipeline.env()["MELTANO_SYS_DIR_ROOT"]).joinpath("run").rglob("*")
        if path.is_file()
    )
