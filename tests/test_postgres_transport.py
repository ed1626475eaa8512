"""Passwords to PostgreSQL never go in clear: the ledger and the tap's warehouse, off
loopback, insist on verified TLS and SCRAM. A fake server that refuses TLS and asks for a
cleartext password (what libpq's default sslmode=prefer answers) never receives it."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from braze_sandbox.testing import SandboxProcess

PASSWORD = "s3cret-never-in-clear"
BIN = Path(sys.executable).parent
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104


class CleartextPasswordServer:
    """Speaks just enough of PostgreSQL's protocol: refuses TLS ('N'), asks for a password
    in clear, and keeps every byte it receives."""

    def __init__(self) -> None:
        self.address = _non_loopback_address()
        self.listener = socket.create_server(("0.0.0.0", 0))  # noqa: S104 (must be reachable off loopback)
        self.port = self.listener.getsockname()[1]
        self.received = bytearray()
        self.asked_for_password = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    self._session(conn)
                except OSError:
                    continue

    def _read(self, conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise OSError("closed")
            data += chunk
        self.received += data
        return data

    def _session(self, conn: socket.socket) -> None:
        while True:  # SSLRequest / GSSENCRequest, then the StartupMessage
            (length,) = struct.unpack("!I", self._read(conn, 4))
            body = self._read(conn, length - 4)
            if struct.unpack("!I", body[:4])[0] in (SSL_REQUEST, GSSENC_REQUEST):
                conn.sendall(b"N")
                continue
            break
        self.asked_for_password += 1
        conn.sendall(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
        kind = self._read(conn, 1)
        (length,) = struct.unpack("!I", self._read(conn, 4))
        self._read(conn, length - 4)
        if kind == b"p":
            error = b"SFATAL\x00C28P01\x00Mfake server\x00\x00"
            conn.sendall(b"E" + struct.pack("!I", len(error) + 4) + error)

    def url(self, scheme: str = "postgresql") -> str:
        return f"{scheme}://braze:{PASSWORD}@{self.address}:{self.port}/ledger"

    def close(self) -> None:
        self.listener.close()


def _non_loopback_address() -> str:
    """An address of this machine that is not loopback, so the safe defaults apply."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        address = probe.getsockname()[0]
    except OSError:
        address = socket.gethostname()  # a name: never taken for loopback
    finally:
        probe.close()
    return socket.gethostname() if address.startswith("127.") else address


@pytest.fixture
def fake_postgres():
    server = CleartextPasswordServer()
    yield server
    server.close()


def run(
    command: list[str], config: dict, tmp_path: Path, stdin: str = ""
) -> subprocess.CompletedProcess:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return subprocess.run(
        [*command, "--config", str(path)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def target_input() -> str:
    schema = {
        "type": "SCHEMA",
        "stream": "s",
        "schema": {"properties": {"customer_id": {"type": "string"}}},
        "key_properties": ["customer_id"],
    }
    record = {"type": "RECORD", "stream": "s", "record": {"customer_id": "c1"}}
    return json.dumps(schema) + "\n" + json.dumps(record) + "\n"


def ledger_config(sandbox: SandboxProcess, server: CleartextPasswordServer, **extra) -> dict:
    return {
        "api_key": sandbox.api_key,
        "rest_endpoint": sandbox.url,
        "ledger_url": server.url(),
        **extra,
    }


def one_error_line(stderr: str, prefix: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr
    return lines[0]


def test_the_ledger_never_sends_its_password_to_a_server_refusing_tls(fake_postgres, tmp_path):
    with SandboxProcess() as sandbox:
        done = run(
            [str(BIN / "target-braze")],
            ledger_config(sandbox, fake_postgres),
            tmp_path,
            target_input(),
        )
    assert done.returncode == 1, done.stderr[-3000:]
    line = one_error_line(done.stderr, "target-braze: error:")
    assert "ledger_url" in line
    assert PASSWORD not in done.stderr
    assert PASSWORD.encode() not in fake_postgres.received
    assert fake_postgres.asked_for_password == 0  # TLS refused: no startup message at all


def test_the_ledger_url_asking_for_prefer_is_refused_naming_the_setting(fake_postgres, tmp_path):
    with SandboxProcess() as sandbox:
        config = ledger_config(
            sandbox, fake_postgres, ledger_url=fake_postgres.url() + "?sslmode=prefer"
        )
        done = run([str(BIN / "target-braze")], config, tmp_path, target_input())
    assert done.returncode == 1
    line = one_error_line(done.stderr, "target-braze: error:")
    assert "asks for sslmode=prefer" in line
    assert "allow_insecure_postgres" in line
    assert fake_postgres.received == b""


def test_allow_insecure_postgres_connects_as_the_url_says(fake_postgres, tmp_path):
    # The control case: it shows the fake server would have taken the password.
    with SandboxProcess() as sandbox:
        config = ledger_config(sandbox, fake_postgres, allow_insecure_postgres=True)
        done = run([str(BIN / "target-braze")], config, tmp_path, target_input())
    assert done.returncode == 1
    assert PASSWORD.encode() in fake_postgres.received
    assert PASSWORD not in done.stderr


def test_the_tap_never_sends_the_warehouse_password_to_a_server_refusing_tls(
    fake_postgres, tmp_path
):
    config = {
        "sqlalchemy_url": fake_postgres.url("postgresql+psycopg"),
        "connect_timeout_seconds": 10,
    }
    done = run([str(BIN / "tap-peak-attributes"), "--discover"], config, tmp_path)
    assert done.returncode != 0
    assert PASSWORD not in done.stderr + done.stdout
    assert PASSWORD.encode() not in fake_postgres.received
    assert fake_postgres.asked_for_password == 0
    insecure = {**config, "allow_insecure_postgres": True}
    run([str(BIN / "tap-peak-attributes"), "--discover"], insecure, tmp_path)
    assert PASSWORD.encode() in fake_postgres.received  # the control case


def test_the_ledger_command_never_sends_its_password_to_a_server_refusing_tls(
    fake_postgres, tmp_path
):
    config = tmp_path / "config.json"

    def ledger(**settings: object) -> subprocess.CompletedProcess:
        config.write_text(json.dumps({"ledger_url": fake_postgres.url(), **settings}))
        return subprocess.run(
            [str(BIN / "target-braze-ledger"), "--config", str(config), "stats"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    done = ledger()
    assert done.returncode == 1, done.stderr[-3000:]
    line = one_error_line(done.stderr, "target-braze-ledger: error:")
    assert "ledger_url" in line
    assert PASSWORD not in done.stderr + done.stdout
    assert PASSWORD.encode() not in fake_postgres.received
    assert fake_postgres.asked_for_password == 0
    # The control case: lowered explicitly, the same command hands the server its password.
    insecure = ledger(allow_insecure_postgres=True)
    assert insecure.returncode == 1
    assert PASSWORD.encode() in fake_postgres.received
    assert PASSWORD not in insecure.stderr + insecure.stdout
