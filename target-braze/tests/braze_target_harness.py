"""Helpers for target-braze tests: Singer messages, running the CLI, reading outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cli_forkserver
from braze_sandbox.testing import SandboxProcess
from target_braze.build import ObjectBuilder, StreamSettings
from target_braze.settings import apply_defaults

API_KEY = "sandbox-key-0123456789abcdef"


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    states: list[dict[str, Any]] = field(default_factory=list)


def schema_message(
    stream: str = "customer_attributes",
    properties: dict[str, Any] | None = None,
    key: str = "customer_id",
    bookmark: str | None = "updated_at",
) -> dict[str, Any]:
    props = properties or {
        "customer_id": {"type": "string"},
        "updated_at": {"type": "string", "format": "date-time"},
        "peak_churn_probability": {"type": ["number", "null"]},
        "peak_segment": {"type": ["string", "null"]},
    }
    message: dict[str, Any] = {
        "type": "SCHEMA",
        "stream": stream,
        "schema": {"type": "object", "properties": props},
        "key_properties": [key],
    }
    if bookmark:
        message["bookmark_properties"] = [bookmark]
    return message


def record(customer: str, stream: str = "customer_attributes", **values: Any) -> dict[str, Any]:
    body = {"customer_id": customer, "updated_at": "2026-11-28T06:00:00+00:00", **values}
    return {"type": "RECORD", "stream": stream, "record": body}


def state(value: Any, stream: str = "customer_attributes") -> dict[str, Any]:
    return {"type": "STATE", "value": {"bookmarks": {stream: {"replication_key_value": value}}}}


def customers(n: int, start: int = 0, **values: Any) -> list[dict[str, Any]]:
    return [
        record(f"c{i}", peak_churn_probability=round(i / 1000, 3), peak_segment="loyal", **values)
        for i in range(start, start + n)
    ]


def target_config(braze: SandboxProcess, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "api_key": braze.api_key,
        "rest_endpoint": braze.url,
        "retry_backoff_seconds": 0.01,
        "rejected_records_path": str(tmp_path / "rejects.jsonl"),
        "run_report_path": str(tmp_path / "report.json"),
        "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
    }
    config.update(overrides)
    return config


def target_command(config_path: Path) -> list[str]:
    return [sys.executable, "-m", "target_braze", "--config", str(config_path)]


def run_target(
    config: dict[str, Any],
    messages: list[dict[str, Any]],
    tmp_path: Path,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> Run:
    """Run the target's CLI as a user would: config file, Singer messages on stdin."""
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    stdin = "".join(json.dumps(m) + "\n" for m in messages)
    # A child of the session's fork server: the CLI's real code, without its imports' cost.
    completed = cli_forkserver.run(
        "target_braze",
        ["--config", str(config_path)],
        input=stdin,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
    states = [json.loads(line) for line in completed.stdout.splitlines() if line.strip()]
    return Run(completed.returncode, completed.stdout, completed.stderr, states)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("target-braze: error:")]


def start_target(config: dict[str, Any], tmp_path: Path, stderr: Any = subprocess.DEVNULL):
    """Start the target's CLI for a conversation: write to its stdin, read its stdout."""
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    return subprocess.Popen(
        target_command(config_path),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )


def send(process: subprocess.Popen, messages: list[dict[str, Any]]) -> None:
    assert process.stdin is not None
    for message in messages:
        process.stdin.write(json.dumps(message) + "\n")
    process.stdin.flush()


def builder_for(
    schema: dict[str, Any] | None = None,
    bookmarks: tuple[str, ...] = (),
    stream: str = "s",
    key_properties: tuple[str, ...] = (),
    **config: Any,
) -> ObjectBuilder:
    """An `ObjectBuilder` for one stream, with `config` over the settings' defaults."""
    schema = schema if schema is not None else {"properties": {}}
    settings = apply_defaults(config)
    entry = (config.get("stream_mappings") or {}).get(stream)
    stream_settings = StreamSettings.from_config(
        stream, schema, settings, entry, bookmarks, key_properties
    )
    return ObjectBuilder(stream_settings, schema, validate=settings["validate_records"])


def libpq_url(url: str) -> str:
    """A SQLAlchemy-style PostgreSQL URL (postgresql+psycopg://) as libpq takes it."""
    return "postgresql://" + url.split("://", 1)[1]
