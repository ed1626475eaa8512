"""Fixtures: one Braze sandbox process for the session, reset for every test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pipeline_harness
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
    """The test PostgreSQL server (see pipeline_harness.postgres_server_url)."""
    return pipeline_harness.postgres_server_url()


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
