"""Fixtures: one Braze sandbox process for the session, reset for every test."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from braze_sandbox.testing import SandboxProcess
from braze_target_harness import API_KEY, libpq_url

SANDBOX_DEFAULTS: dict[str, Any] = {}


@pytest.fixture(scope="session")
def sandbox_process() -> Iterator[SandboxProcess]:
    with SandboxProcess(api_key=API_KEY, permissionless_key="no-permission-key") as process:
        SANDBOX_DEFAULTS.update(process.config())
        yield process


@pytest.fixture
def braze(sandbox_process: SandboxProcess) -> Iterator[SandboxProcess]:
    """The sandbox, emptied and with default settings for each test."""
    sandbox_process.reset()
    sandbox_process.configure(**SANDBOX_DEFAULTS)
    yield sandbox_process
    sandbox_process.configure(**SANDBOX_DEFAULTS)


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """TEST_POSTGRES_URL, or the server scripts/postgres starts. Never skipped."""
    url = os.environ.get("TEST_POSTGRES_URL")
    if not url:
        script = Path(__file__).resolve().parents[2] / "scripts" / "postgres"
        done = subprocess.run(
            [str(script)], capture_output=True, text=True, timeout=600, check=False
        )
        if done.returncode != 0 or not done.stdout.strip():
            pytest.fail(f"PostgreSQL is required: scripts/postgres failed: {done.stderr[-500:]}")
        url = done.stdout.strip().splitlines()[-1]
    return url


@pytest.fixture
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh database per test, dropped afterwards: tests never see each other's rows."""
    name = f"ledger_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq_url(postgres_server_url), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = postgres_server_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(libpq_url(postgres_server_url), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
