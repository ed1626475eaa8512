"""The fakesnow emulator in server mode: Snowflake's HTTP protocol on loopback, for tests.

Used by the tap's Snowflake tests (through conftest's fixtures) and by the end-to-end
`meltano run` test in tests/test_e2e_snowflake.py.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import snowflake.connector
import sqlalchemy as sa

#: snowflake-sqlalchemy refuses `host`/`protocol` in a URL's query unless this is set; the
#: emulator is plain http on loopback, so the tests' URLs need it (see the README's limits).
LEGACY_URL_PARAMS = "SNOWFLAKE_SQLALCHEMY_LEGACY_URL_PARAMS"
#: Any password logs in; this one is the emulator's documented default.
EMULATOR_PASSWORD = "snow"
_LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


@dataclass
class SnowflakeEmulator:
    """A `fakesnow -s` server process: Snowflake's HTTP protocol on 127.0.0.1.

    It accepts any user and password. Its databases live in its memory for the session,
    so each test works in a database of its own.
    """

    port: int
    process: subprocess.Popen[bytes]

    def url(
        self, database: str, *, schema: str | None = None, password: str | None = None, **query: str
    ) -> str:
        """A `snowflake://` URL as a user writes one, with the emulator's endpoint added."""
        endpoint = {"host": "127.0.0.1", "port": str(self.port), "protocol": "http"}
        return sa.engine.URL.create(
            "snowflake",
            username="fake",
            password=password or EMULATOR_PASSWORD,
            host="fakesnow",
            database=database if schema is None else f"{database}/{schema}",
            query={**endpoint, **query},
        ).render_as_string(hide_password=False)

    def execute(self, database: str | None, *statements: str) -> list[list[tuple]]:
        """Run SQL with the Snowflake connector itself (not through the tap); rows of each."""
        connection = snowflake.connector.connect(
            user="fake",
            password=EMULATOR_PASSWORD,
            account="fakesnow",
            host="127.0.0.1",
            port=self.port,
            protocol="http",
            database=database,
            session_parameters={"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False},
        )
        try:
            cursor = connection.cursor()
            results = []
            for statement in statements:
                cursor.execute(statement)
                results.append(cursor.fetchall() if cursor.description else [])
            return results
        finally:
            connection.close()


def start_snowflake_emulator(log_path: Path, timeout: float = 60) -> SnowflakeEmulator:
    """Start `fakesnow -s` on a free port and wait until it listens."""
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "fakesnow", "-s"],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _LISTENING.search(log_path.read_text(errors="replace"))
        if found:
            return SnowflakeEmulator(int(found.group(1)), process)
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    process.wait()
    tail = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"fakesnow server did not start:\n{tail}")


def stop_snowflake_emulator(emulator: SnowflakeEmulator) -> None:
    """SIGINT (what `fakesnow -s` waits for), then kill if it lingers."""
    emulator.process.send_signal(signal.SIGINT)
    try:
        emulator.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        emulator.process.kill()
        emulator.process.wait()
