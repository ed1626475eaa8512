"""Secrets that never touch disk: the warehouse URL or Peak key from the variable a setting
names (`sqlalchemy_url_env`, `peak_api_key_env`), and libpq's PGPASSWORD with a password-less
URL, checked against a PostgreSQL server that really asks for the password."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cli_forkserver
import pytest
import sqlalchemy as sa
from tap_peak_attributes import credentials, sample
from tap_peak_attributes.errors import TapPeakError
from werkzeug import Response

PREFIX = "tap-peak-attributes: error: "
PEAK_PATH = "/connections/api/v2/connections/credentials"


def run_tap(tmp_path: Path, config: dict, env: dict[str, str]) -> subprocess.CompletedProcess:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("TAP_PEAK", "PEAK_", "PG"))
    }
    return cli_forkserver.run(
        "tap_peak_attributes", ["--config", str(path)], env={**environment, **env}, timeout=120
    )


def customers(done: subprocess.CompletedProcess) -> list[str]:
    messages = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return [m["record"]["customer_id"] for m in messages if m["type"] == "RECORD"]


@pytest.fixture
def small_warehouse(sqlite_url: str) -> str:
    sample.generate(sqlite_url, 4)  # the bundled sample has 1,200: never confused
    return sqlite_url


def test_the_url_is_read_from_peak_warehouse_url_when_no_setting_names_a_warehouse(
    tmp_path, small_warehouse
):
    done = run_tap(tmp_path, {}, {"PEAK_WAREHOUSE_URL": small_warehouse})
    assert done.returncode == 0, done.stderr
    assert customers(done) == [sample.customer_id(n) for n in range(1, 5)]


def test_sqlalchemy_url_env_names_another_variable(tmp_path, small_warehouse):
    done = run_tap(
        tmp_path,
        {"sqlalchemy_url_env": "ACME_WAREHOUSE"},
        {"ACME_WAREHOUSE": small_warehouse, "PEAK_WAREHOUSE_URL": "sqlite:///nowhere.db"},
    )
    assert done.returncode == 0, done.stderr
    assert len(customers(done)) == 4


def test_a_setting_wins_over_the_variables(tmp_path, small_warehouse):
    done = run_tap(
        tmp_path,
        {"sqlalchemy_url": small_warehouse},
        {"PEAK_WAREHOUSE_URL": "sqlite:///nowhere.db", "PEAK_API_KEY": "unused"},
    )
    assert done.returncode == 0, done.stderr
    assert len(customers(done)) == 4


def test_both_variables_set_is_one_line(tmp_path, small_warehouse):
    done = run_tap(
        tmp_path, {}, {"PEAK_WAREHOUSE_URL": small_warehouse, "PEAK_API_KEY": "k-secret-1"}
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "k-secret-1" not in done.stderr
    assert done.stderr.splitlines()[-1] == (
        PREFIX + "both PEAK_WAREHOUSE_URL (sqlalchemy_url_env) and PEAK_API_KEY "
        "(peak_api_key_env) are set: unset one; the tap reads the warehouse from a URL or "
        "from Peak's API, not both"
    )


def test_a_bad_url_in_the_variable_is_named_by_the_variable_and_not_echoed(tmp_path):
    done = run_tap(tmp_path, {}, {"PEAK_WAREHOUSE_URL": "not a url p4ssw0rd"})
    assert done.returncode == 1
    assert "p4ssw0rd" not in done.stderr
    assert done.stderr.splitlines()[-1] == (
        PREFIX + "PEAK_WAREHOUSE_URL (sqlalchemy_url_env) is not a valid SQLAlchemy URL "
        "(dialect://user@host/db)"
    )


def test_the_peak_key_is_read_from_peak_api_key(httpserver, postgres_url, tmp_path):
    sample.generate(postgres_url, 6)
    url = sa.engine.make_url(postgres_url)
    key = "peak-key-" + secrets.token_hex(8)
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
    done = run_tap(tmp_path, {"peak_api_url": httpserver.url_for("/")}, {"PEAK_API_KEY": key})
    assert done.returncode == 0, done.stderr
    assert len(customers(done)) == 6
    assert key not in done.stderr


def test_a_refused_key_from_the_variable_names_the_variable(httpserver, tmp_path):
    key = "peak-key-" + secrets.token_hex(8)
    httpserver.expect_request(PEAK_PATH).respond_with_response(Response("no", status=401))
    done = run_tap(
        tmp_path,
        {"peak_api_url": httpserver.url_for("/"), "peak_api_key_env": "ACME_PEAK_KEY"},
        {"ACME_PEAK_KEY": key},
    )
    assert done.returncode == 1
    assert key not in done.stderr
    assert done.stderr.splitlines()[-1].startswith(
        PREFIX + "Peak refused ACME_PEAK_KEY (peak_api_key_env) (HTTP 401)"
    )


def test_an_empty_variable_counts_as_unset():
    found = credentials.resolve({}, {"PEAK_WAREHOUSE_URL": "", "PEAK_API_KEY": ""})
    assert not found.is_configured
    with pytest.raises(TapPeakError, match="not both"):
        credentials.resolve({"sqlalchemy_url": "sqlite://", "peak_api_key": "k"}, {})


# --- PGPASSWORD, against a server that asks for the password ---------------------------


@dataclass
class PasswordServer:
    """A PostgreSQL cluster of its own with scram-sha-256 auth on 127.0.0.1."""

    url_without_password: str
    password: str


def _postgres_bin() -> Path:
    for directory in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (directory / "initdb").exists():
            return directory
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    pytest.fail("PostgreSQL's initdb is needed (scripts/postgres installs it)")


def _as_postgres(*command: str) -> None:
    if os.geteuid() == 0:
        command = ("runuser", "-u", "postgres", "--", *command)
    subprocess.run(command, check=True, capture_output=True, timeout=120)


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def password_server() -> Iterator[PasswordServer]:
    binaries = _postgres_bin()
    # Outside any private directory of root's: the server runs as user postgres.
    data = Path(tempfile.mkdtemp(prefix="peak-pgpassword-", dir="/var/tmp"))
    password = "pw-" + secrets.token_hex(8)
    (data / "pw").write_text(password)
    port = _free_port()
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
        shutil.chown(data / "pw", "postgres")
    cluster = data / "cluster"
    try:
        _as_postgres(
            str(binaries / "initdb"), "-D", str(cluster), "-U", "postgres",
            "--auth=scram-sha-256", f"--pwfile={data / 'pw'}", "--encoding=UTF8", "--no-locale",
        )  # fmt: skip
        _as_postgres(
            str(binaries / "pg_ctl"), "-D", str(cluster), "-l", str(data / "log"), "-w",
            "-o", f"-c listen_addresses=127.0.0.1 -c port={port} "
            f"-c unix_socket_directories={data} -c fsync=off", "start",
        )  # fmt: skip
        yield PasswordServer(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", password)
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _as_postgres(str(binaries / "pg_ctl"), "-D", str(cluster), "-m", "immediate", "stop")
        shutil.rmtree(data, ignore_errors=True)


def test_a_url_without_its_password_connects_with_pgpassword(tmp_path, password_server):
    with_password = sa.engine.make_url(password_server.url_without_password).set(
        password=password_server.password
    )
    sample.generate(with_password.render_as_string(hide_password=False), 5)
    config = {"sqlalchemy_url": password_server.url_without_password}

    done = run_tap(tmp_path, config, {"PGPASSWORD": password_server.password})

    assert done.returncode == 0, done.stderr
    assert len(customers(done)) == 5
    assert password_server.password not in done.stderr


def test_without_pgpassword_the_server_refuses_and_that_is_one_line(tmp_path, password_server):
    done = run_tap(tmp_path, {"sqlalchemy_url": password_server.url_without_password}, {})
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith(PREFIX + "cannot connect to the warehouse at postgresql+psycopg://")
    assert "password" in last


def test_a_wrong_pgpassword_is_refused_and_not_echoed(tmp_path, password_server):
    done = run_tap(
        tmp_path,
        {"sqlalchemy_url": password_server.url_without_password},
        {"PGPASSWORD": "wrong-" + secrets.token_hex(4)},
    )
    assert done.returncode == 1
    assert "wrong-" not in done.stderr
    assert "password authentication failed" in done.stderr.splitlines()[-1]
