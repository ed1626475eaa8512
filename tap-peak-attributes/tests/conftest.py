"""Shared fixtures: real PostgreSQL and Snowflake-emulator servers, fresh databases, and
ways to run the tap."""

from __future__ import annotations

import contextlib
import io
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cli_forkserver
import pipeline_harness
import pytest
import sqlalchemy as sa
from tap_peak_attributes.tap import TapPeakAttributes

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    """Singer messages of one tap run."""

    messages: list[dict] = field(default_factory=list)
    stderr: str = ""
    returncode: int = 0

    def records(self, stream: str | None = None) -> list[dict]:
        return [
            m["record"]
            for m in self.messages
            if m["type"] == "RECORD" and (stream is None or m["stream"] == stream)
        ]

    def states(self) -> list[dict]:
        return [m["value"] for m in self.messages if m["type"] == "STATE"]

    @property
    def final_state(self) -> dict:
        return self.states()[-1]

    def ids(self) -> list[str]:
        return [r["customer_id"] for r in self.records()]


def parse_messages(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture
def run_tap() -> Callable[..., Run]:
    """Run the tap in-process (fast: for tests needing many runs)."""

    def run(config: dict, state: dict | None = None) -> Run:
        tap = TapPeakAttributes(config=config, state=state or {}, parse_env_config=False)
        # The tap's msgspec writer writes bytes to sys.stdout.buffer.
        raw = io.BytesIO()
        stdout = io.TextIOWrapper(raw, encoding="utf-8")
        with contextlib.redirect_stdout(stdout):
            tap.sync_all()
        stdout.flush()
        return Run(parse_messages(raw.getvalue().decode()))

    return run


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., Run]:
    """Run the tap's CLI as a user does, with config and state files (fork server)."""

    def run(config: dict | None, state: dict | None = None, *extra: str) -> Run:
        args: list[str] = []
        if config is not None:
            config_file = tmp_path / f"config-{uuid.uuid4().hex}.json"
            config_file.write_text(json.dumps(config))
            args += ["--config", str(config_file)]
        if state is not None:
            state_file = tmp_path / f"state-{uuid.uuid4().hex}.json"
            state_file.write_text(json.dumps(state))
            args += ["--state", str(state_file)]
        # A child of the session's fork server: the CLI's real code, without its imports' cost.
        done = cli_forkserver.run("tap_peak_attributes", [*args, *extra], timeout=120)
        messages = parse_messages(done.stdout) if done.returncode == 0 else []
        return Run(messages, done.stderr, done.returncode)

    return run


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """TEST_POSTGRES_URL, or the server scripts/postgres starts. Never skipped."""
    try:
        url = pipeline_harness.postgres_server_url()
    except RuntimeError as exc:
        pytest.fail(f"PostgreSQL is required for these tests: {exc}")
    try:
        engine = sa.create_engine(url)
        with engine.connect():
            pass
        engine.dispose()
    except sa.exc.SQLAlchemyError as exc:
        pytest.fail(f"PostgreSQL at {url} is not reachable: {str(exc).splitlines()[0]}")
    return url


@pytest.fixture
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh database per test, dropped afterwards: tests stay independent."""
    server = sa.engine.make_url(postgres_server_url)
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """An empty SQLite file per test."""
    path = tmp_path / "warehouse.sqlite"
    sqlite_engine = sa.create_engine(f"sqlite:///{path}")
    with sqlite_engine.connect():
        pass
    sqlite_engine.dispose()
    return f"sqlite:///{path}"


@pytest.fixture(params=["sqlite", "postgres"])
def warehouse_url(request: pytest.FixtureRequest) -> str:
    """The same behaviour checked on SQLite and on a real PostgreSQL (Redshift's protocol)."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("postgres_url")


def _execute(url: str, *statements: str, params: list[dict] | dict | None = None) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement), params or {})
    finally:
        engine.dispose()


@pytest.fixture
def execute() -> Callable[..., None]:
    """Run SQL against a test database (setup and simulated changes)."""
    return _execute


# --- Snowflake: the fakesnow emulator in server mode ----------------------------------

from snowflake_emulator import (  # noqa: E402 - the Snowflake section's own imports
    LEGACY_URL_PARAMS,
    SnowflakeEmulator,
    start_snowflake_emulator,
    stop_snowflake_emulator,
)


@pytest.fixture(scope="session")
def snowflake_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SnowflakeEmulator]:
    """One emulator for the session. Never skipped: if it cannot start, tests fail."""
    log_path = tmp_path_factory.mktemp("fakesnow") / "server.log"
    try:
        emulator = start_snowflake_emulator(log_path)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield emulator
    stop_snowflake_emulator(emulator)


@pytest.fixture
def snowflake_database(
    snowflake_emulator: SnowflakeEmulator, monkeypatch: pytest.MonkeyPatch
) -> str:
    """A fresh database with an empty schema PUBLISH; URLs to it work in this process
    and in the tap processes it starts."""
    monkeypatch.setenv(LEGACY_URL_PARAMS, "1")
    name = f"PEAK_{uuid.uuid4().hex[:10].upper()}"
    snowflake_emulator.execute(None, f"CREATE DATABASE {name}", f"CREATE SCHEMA {name}.PUBLISH")
    return name
