"""Setting values never reach an error line, and values that would leak or inject are
refused with one line naming the setting."""

from __future__ import annotations

import json
import os
import subprocess

import cli_forkserver
import pytest
from braze_target_harness import (
    customers,
    error_lines,
    schema_message,
    state,
    target_config,
)

SECRET = "k3y-0123456789-SECRET"
MESSAGES = [schema_message(), *customers(2), state("s")]


def run(config: dict, tmp_path, env: dict | None = None) -> subprocess.CompletedProcess:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return cli_forkserver.run(
        "target_braze",
        ["--config", str(path)],
        input="".join(json.dumps(m) + "\n" for m in MESSAGES),
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def refused(done: subprocess.CompletedProcess, *expected: str) -> str:
    assert done.returncode == 1, done.stderr
    [line] = error_lines(done.stderr)
    for text in expected:
        assert text in line, line
    assert "Traceback" not in done.stderr
    return line


def test_a_non_string_api_key_is_not_echoed(braze, tmp_path):
    done = run(target_config(braze, tmp_path, api_key=int("987654321987654321")), tmp_path)
    # A secret's value is never shown; other settings show theirs (test_settings_errors).
    refused(done, "setting api_key: (value hidden) is not text; give text")
    assert "987654321987654321" not in done.stderr
    assert braze.stats()["requests"] == 0


@pytest.mark.parametrize("injected", ["\r\nX-Injected: 1", "\n", "\x00"])
def test_a_control_character_in_the_api_key_is_refused_without_echoing_it(
    braze, tmp_path, injected
):
    done = run(target_config(braze, tmp_path, api_key=SECRET + injected), tmp_path)
    refused(done, "api_key holds a control character")
    assert SECRET not in done.stderr
    assert braze.stats()["requests"] == 0


def test_a_control_character_in_the_key_variable_is_refused_naming_the_variable(braze, tmp_path):
    config = target_config(braze, tmp_path)
    del config["api_key"]
    done = run(config, tmp_path, env={"BRAZE_API_KEY": SECRET + "\r\nX-Injected: 1"})
    refused(done, "the variable BRAZE_API_KEY (api_key_env) holds a control character")
    assert SECRET not in done.stderr
    assert braze.stats()["requests"] == 0


def test_userinfo_in_rest_endpoint_is_refused_without_echoing_it(braze, tmp_path):
    endpoint = braze.url.replace("://", f"://someone:{SECRET}@")
    done = run(target_config(braze, tmp_path, rest_endpoint=endpoint), tmp_path)
    refused(done, "rest_endpoint holds a user name or password")
    assert SECRET not in done.stderr
    assert braze.stats()["requests"] == 0


def test_a_control_character_in_any_setting_is_refused_naming_it(braze, tmp_path):
    mappings = {"customer_attributes": {"alias_label": "peak\r\nid"}}
    done = run(target_config(braze, tmp_path, stream_mappings=mappings), tmp_path)
    refused(done, "stream_mappings.customer_attributes.alias_label holds a control character")
