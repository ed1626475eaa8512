"""Fixtures: one Braze sandbox process for the session, reset for every test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from braze_sandbox.testing import SandboxProcess
from braze_target_harness import API_KEY

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
