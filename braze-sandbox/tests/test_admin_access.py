"""The admin API (/_sandbox/) answers only with its token and a Host naming the sandbox;
a bind off loopback is warned about. The testing helper passes the token itself."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from braze_sandbox.server import ADMIN_TOKEN_HEADER, ADMIN_TOKEN_VARIABLE
from braze_sandbox.testing import SandboxProcess


def test_the_admin_api_without_its_token_is_refused(sandbox: SandboxProcess):
    for headers in ({}, {ADMIN_TOKEN_HEADER: "guess"}):
        answer = requests.get(f"{sandbox.url}/_sandbox/profiles", headers=headers, timeout=10)
        assert answer.status_code == 401
        assert ADMIN_TOKEN_HEADER in answer.json()["message"]
    answer = requests.post(f"{sandbox.url}/_sandbox/reset", timeout=10)
    assert answer.status_code == 401


def test_the_admin_api_with_its_token_answers(sandbox: SandboxProcess):
    headers = {ADMIN_TOKEN_HEADER: sandbox.admin_token}
    answer = requests.get(f"{sandbox.url}/_sandbox/profiles", headers=headers, timeout=10)
    assert answer.status_code == 200
    assert sandbox.profiles() == []  # the helper sends the token itself


def test_a_foreign_host_header_is_refused_even_with_the_token(sandbox: SandboxProcess):
    headers = {ADMIN_TOKEN_HEADER: sandbox.admin_token, "Host": "attacker.example"}
    answer = requests.get(f"{sandbox.url}/_sandbox/stats", headers=headers, timeout=10)
    assert answer.status_code == 403
    assert "Host not allowed" in answer.json()["message"]


def test_health_needs_no_token(sandbox: SandboxProcess):
    assert requests.get(f"{sandbox.url}/_sandbox/health", timeout=10).status_code == 200


def _serve(tmp_path: Path, *args: str, env: dict[str, str]) -> tuple[str, str]:
    """Start the CLI, wait for its ready file, stop it; return its stdout and stderr."""
    ready = tmp_path / "ready"
    environment = {k: v for k, v in os.environ.items() if k != ADMIN_TOKEN_VARIABLE}
    process = subprocess.Popen(
        [sys.executable, "-m", "braze_sandbox", "--port", "0", "--ready-file", str(ready), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**environment, **env},
    )
    try:
        while not ready.exists() and process.poll() is None:
            time.sleep(0.05)
    finally:
        process.terminate()
        stdout, stderr = process.communicate(timeout=30)
    return stdout, stderr


def test_a_bind_off_loopback_is_warned_about(tmp_path):
    _, stderr = _serve(tmp_path, "--host", "0.0.0.0", env={})  # noqa: S104
    assert "braze-sandbox: warning: listening on 0.0.0.0, not loopback" in stderr


@pytest.mark.parametrize("chosen", [None, "chosen-token-123456"])
def test_the_token_is_chosen_by_the_variable_or_generated_and_shown(tmp_path, chosen):
    env = {ADMIN_TOKEN_VARIABLE: chosen} if chosen else {}
    stdout, stderr = _serve(tmp_path, env=env)
    assert "warning" not in stderr
    if chosen:
        assert "admin token" not in stdout  # the user knows it; never echoed
    else:
        assert f"admin token (header {ADMIN_TOKEN_HEADER}): " in stdout
