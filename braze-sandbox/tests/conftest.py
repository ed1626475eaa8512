"""One sandbox process per module; every test starts from an empty sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from braze_sandbox.testing import SandboxProcess

API_KEY = "sandbox-key"
NO_PERMISSION_KEY = "read-nothing-key"


@pytest.fixture(scope="module")
def sandbox_process() -> Iterator[SandboxProcess]:
    with SandboxProcess(
        permissionless_key=NO_PERMISSION_KEY,
        errors={"cust-7": "BLACKLISTED_EXTERNAL_USER_ID"},
        seed=1,
    ) as process:
        yield process


@pytest.fixture
def sandbox(sandbox_process: SandboxProcess) -> SandboxProcess:
    sandbox_process.reset()
    return sandbox_process


def _track(
    sandbox: SandboxProcess, body: Any, key: str | None = API_KEY, **kwargs: Any
) -> requests.Response:
    """POST /users/track as a client would."""
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    if isinstance(body, bytes):
        headers["Content-Type"] = "application/json"
        return requests.post(f"{sandbox.url}/users/track", data=body, headers=headers, timeout=10)
    return requests.post(
        f"{sandbox.url}/users/track", json=body, headers=headers, timeout=10, **kwargs
    )


def _custom(sandbox: SandboxProcess, external_id: str) -> dict[str, Any]:
    profile = sandbox.profile(external_id)
    assert profile is not None, f"no profile {external_id}"
    return dict(profile.get("custom_attributes", {}))


@pytest.fixture
def track() -> Any:
    """``track(sandbox, body, key=...)``: POST /users/track with requests."""
    return _track


@pytest.fixture
def custom() -> Any:
    """``custom(sandbox, external_id)``: the exported custom attributes of one user."""
    return _custom
