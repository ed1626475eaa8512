"""No secret on disk in the recommended production setup: during a run, and after kill -9.

Meltano writes every setting it knows into `.meltano/run/<plugin>/*.config.json` (mode
0644) for the length of each run, and a kill -9 leaves the file behind. The production
setup (README, "Using target-braze (or the tap) in your own Meltano project") keeps
secrets out of Meltano's settings: the target reads its key from the variable named by
`api_key_env` (BRAZE_API_KEY), the tap its warehouse URL from the one named by
`sqlalchemy_url_env` (PEAK_WAREHOUSE_URL), in meltano.yml's `prod` environment.

Each test runs that setup and scans every file of the run's `.meltano` system directory
(the session's own, MELTANO_SYS_DIR_ROOT) again and again while it runs. The sandbox
handles the first HELD_AFTER_REQUESTS requests, then fails every later one (its fail
point), so the run is held mid-sync, retrying; once the sandbox reports that, and a scan
made since has seen both plugins' config files, the whole run is killed with SIGKILL. Then
what the kill left is scanned, the sandbox heals, a rerun finishes and everything is
scanned again. When to scan and when to kill is decided by the sandbox's progress, never
by the clock.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from pipeline_harness import (
    PEAK_SAMPLE,
    PROJECT_ROOT,
    RUN_TIMEOUT_SECONDS,
    Pipeline,
    expected_profiles,
    generate_warehouse,
    init_ledger,
    mismatches,
    postgres_server_url,
    sandbox_attributes,
    summarise,
)

pytestmark = pytest.mark.e2e

CUSTOMERS = 3_000
SEED = 424242
# 3,000 customers are 40 requests of 75: the sandbox confirms the first 20 (1,500
# customers), fails the rest, and the target retries them after at least half of
# RETRY_BACKOFF_SECONDS, then longer each time (8 retries): the run cannot end for
# minutes, however fast or slow the machine, so the kill lands while it is alive.
OBJECTS_PER_REQUEST = 75
MAX_IN_FLIGHT = 2
HELD_AFTER_REQUESTS = 20
RETRY_BACKOFF_SECONDS = 30
POLL_SECONDS = 0.02
# Meltano's run files: `tap.<uuid>.config.json` and `target.<uuid>.config.json`.
CONFIG_SUFFIX = ".config.json"
PLUGIN_VENV_LINKS = {"extractors", "loaders"}  # the project's plugin virtualenvs, linked in


@dataclass
class ProductionPipeline(Pipeline):
    """The harness's pipeline in the README's production setup.

    The `prod` environment of meltano.yml (the `dev` one carries the sandbox's own key as
    `api_key`), the target's key only in BRAZE_API_KEY and, when given, the warehouse URL
    only in PEAK_WAREHOUSE_URL: no secret in any Meltano setting.
    """

    secret_variables: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        # The prod environment requires an existing ledger: created once, as deployed.
        init_ledger(f"sqlite:///{self.ledger_path}", self.sandbox_url, self.api_key)

    def env(self) -> dict[str, str]:
        env = super().env()
        env.pop("TARGET_BRAZE_API_KEY")
        for variable in ("BRAZE_API_KEY", "PEAK_WAREHOUSE_URL", "PEAK_API_KEY"):
            env.pop(variable, None)
        env["MELTANO_ENVIRONMENT"] = "prod"
        env.update(self.secret_variables)
        return env


@dataclass
class Scan:
    """What one pass over every file of the system directory found."""

    files: int = 0
    config_files: list[Path] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)


def scan(sys_dir: Path, secrets: dict[str, str]) -> Scan:
    """Read every file under `sys_dir` (but the linked plugin venvs) looking for secrets.

    Files come and go while Meltano runs; one that vanished between listing and reading
    is skipped.
    """
    found = Scan()
    roots = [p for p in sys_dir.iterdir() if p.name not in PLUGIN_VENV_LINKS]
    paths = [r for r in roots if r.is_file()]
    for root in roots:
        if root.is_dir() and not root.is_symlink():
            paths.extend(root.rglob("*"))
    for path in paths:
        if path.is_symlink() or not path.is_file():
            continue
        try:
            content = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            continue
        found.files += 1
        if path.name.endswith(CONFIG_SUFFIX):
            found.config_files.append(path)
        found.leaks.extend(
            f"{path.relative_to(sys_dir)}: {name}"
            for name, secret in secrets.items()
            if secret.encode() in content
        )
    return found


def _plugins_with_config(paths: list[Path]) -> set[str]:
    """Whose config files these are: {"tap", "target"}."""
    return {path.name.split(".")[0] for path in paths}


def _held(sandbox: Any) -> bool:
    """The sandbox failed a request past its fail point: the run now waits to retry."""
    return sandbox.stats()["injected"].get("failpoint", 0) > 0


@dataclass
class Observed:
    """What the scans saw while the run went, after its kill -9, and after a rerun."""

    scans_mid_sync: int
    leaks_during: list[str]
    config_during: set[str]
    after_kill: Scan
    left_by_kill: list[Path]
    killed_returncode: int
    rerun_returncode: int
    rerun_output: str
    after_rerun: Scan


def run_scan_kill_rerun(
    pipeline: ProductionPipeline, sandbox: Any, sys_dir: Path, secrets: dict[str, str], log: Path
) -> Observed:
    """Scan while the run syncs, kill -9 it while held mid-sync, scan, heal, rerun, scan.

    The sandbox must have been started with `fail_after_requests=HELD_AFTER_REQUESTS`.
    """
    leaks: list[str] = []
    config_during: set[str] = set()
    scans_mid_sync = 0
    # Runs killed earlier in the session (the crash test) left config files of their own.
    earlier = set(scan(sys_dir, secrets).config_files)
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    process = pipeline.start(log_path=log)
    try:
        while process.poll() is None:
            held = _held(sandbox)
            found = scan(sys_dir, secrets)
            leaks.extend(found.leaks)
            if held and process.poll() is None:
                # Begun while the run was held and ended with the run still alive: mid-sync.
                scans_mid_sync += 1
                config_during |= _plugins_with_config(
                    [path for path in found.config_files if path not in earlier]
                )
            if config_during >= {"tap", "target"}:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "the run neither progressed nor ended"
            time.sleep(POLL_SECONDS)
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    after_kill = scan(sys_dir, secrets)
    left_by_kill = [path for path in after_kill.config_files if path not in earlier]
    sandbox.configure(fail_after_requests=0)
    # Meltano still believes the killed run is going: --force, as after any crash.
    rerun = pipeline.run(force=True)
    return Observed(
        scans_mid_sync=scans_mid_sync,
        leaks_during=leaks,
        config_during=config_during,
        after_kill=after_kill,
        left_by_kill=left_by_kill,
        killed_returncode=process.returncode,
        rerun_returncode=rerun.returncode,
        rerun_output=rerun.describe(),
        after_rerun=scan(sys_dir, secrets),
    )


def _assert_scans_clean_and_kill_left_config(observed: Observed, sandbox_url: str) -> None:
    """The scans covered the run's config files mid-sync and after the kill; no secret."""
    assert observed.killed_returncode == -signal.SIGKILL, (
        f"the run ended (exit {observed.killed_returncode}) before it was killed"
    )
    assert observed.scans_mid_sync >= 1
    assert observed.config_during == {"tap", "target"}, observed.config_during
    assert not observed.leaks_during, f"secrets on disk during the run: {observed.leaks_during}"
    # The kill left both config files behind (Meltano removes them only on a normal exit)
    # and the scan read them: the target's is its real config, without the key.
    left = observed.left_by_kill
    assert _plugins_with_config(left) == {"tap", "target"}, left
    (target_config,) = [path for path in left if path.name.startswith("target.")]
    config = json.loads(target_config.read_text())
    assert config["rest_endpoint"] == sandbox_url
    assert "api_key" not in config
    assert not observed.after_kill.leaks, (
        f"secrets left on disk by the kill -9: {observed.after_kill.leaks}"
    )
    assert observed.rerun_returncode == 0, observed.rerun_output
    assert not observed.after_rerun.leaks, f"secrets on disk after a run: {observed.after_rerun}"


def _new_secret(kind: str) -> str:
    """A value no other run uses, so finding it anywhere means this run wrote it."""
    return f"{kind}-{uuid.uuid4().hex}"


def _pipeline(
    meltano_env: dict[str, str],
    tmp_path: Path,
    sandbox: Any,
    warehouse: Path | None,
    secret_variables: dict[str, str],
) -> ProductionPipeline:
    return ProductionPipeline(
        workdir=tmp_path / "pipeline",
        base_env=meltano_env,
        sandbox_url=sandbox.url,
        api_key=sandbox.api_key,
        warehouse=warehouse,
        settings={
            "TARGET_BRAZE_MAX_CONCURRENT_REQUESTS": str(MAX_IN_FLIGHT),
            "TARGET_BRAZE_MAX_OBJECTS_PER_REQUEST": str(OBJECTS_PER_REQUEST),
            "TARGET_BRAZE_RETRY_BACKOFF_SECONDS": str(RETRY_BACKOFF_SECONDS),
        },
        secret_variables=secret_variables,
    )


def test_braze_key_from_braze_api_key_is_in_no_file_under_meltano_during_a_run_or_after_kill_9(
    start_sandbox, meltano_env, tmp_path
):
    key = _new_secret("braze-key")
    warehouse = generate_warehouse(tmp_path / "warehouse.sqlite", CUSTOMERS, seed=SEED)
    sandbox = start_sandbox(api_key=key, fail_after_requests=HELD_AFTER_REQUESTS)
    pipeline = _pipeline(meltano_env, tmp_path, sandbox, warehouse, {"BRAZE_API_KEY": key})
    sys_dir = Path(meltano_env["MELTANO_SYS_DIR_ROOT"])

    observed = run_scan_kill_rerun(
        pipeline, sandbox, sys_dir, {"Braze API key": key}, tmp_path / "runs.log"
    )

    _assert_scans_clean_and_kill_left_config(observed, sandbox.url)
    # The key did authenticate: every customer arrived, sent with it alone.
    problems = mismatches(expected_profiles(warehouse), sandbox_attributes(sandbox))
    assert not problems, summarise(problems)


# The warehouse: PostgreSQL (Redshift's protocol) with a login role that has a password --


@dataclass
class PasswordWarehouse:
    """A Peak-like warehouse database readable by a role that logs in with a password."""

    url: str  # postgresql+psycopg://<role>:<password>@host:port/<database>
    password: str
    customers: set[str]


@pytest.fixture
def password_warehouse() -> Iterator[PasswordWarehouse]:
    server = sa.make_url(postgres_server_url())
    name = "secrets_" + uuid.uuid4().hex[:10]
    role = "peak_reader_" + uuid.uuid4().hex[:10]
    password = _new_secret("warehouse-password")
    admin_conninfo = server.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin_conninfo, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
        connection.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
    database = server.set(database=name)
    try:
        generated = subprocess.run(
            [
                PEAK_SAMPLE,
                "generate",
                "--url",
                database.render_as_string(hide_password=False),
                "--customers",
                str(CUSTOMERS),
                "--seed",
                str(SEED),
                "--no-long",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert generated.returncode == 0, generated.stderr
        conninfo = database.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(f'GRANT CONNECT ON DATABASE "{name}" TO "{role}"')
            connection.execute(f'GRANT USAGE ON SCHEMA publish TO "{role}"')
            connection.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA publish TO "{role}"')
            customers = {
                str(row[0])
                for row in connection.execute("SELECT customer_id FROM publish.customer_attributes")
            }
        url = database.set(username=role, password=password)
        yield PasswordWarehouse(url.render_as_string(hide_password=False), password, customers)
    finally:
        with psycopg.connect(admin_conninfo, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            connection.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_key_and_warehouse_password_from_variables_are_in_no_file_under_meltano_or_after_kill_9(
    start_sandbox, meltano_env, tmp_path, password_warehouse
):
    tap_settings = json.loads(
        subprocess.run(
            [
                str(PROJECT_ROOT / ".venv" / "bin" / "tap-peak-attributes"),
                "--about",
                "--format=json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
    )["settings"]["properties"]
    assert tap_settings.get("sqlalchemy_url_env", {}).get("default") == "PEAK_WAREHOUSE_URL", (
        "the tap has no sqlalchemy_url_env setting (default PEAK_WAREHOUSE_URL) to read its "
        "warehouse URL from a variable Meltano never writes"
    )
    key = _new_secret("braze-key")
    sandbox = start_sandbox(api_key=key, fail_after_requests=HELD_AFTER_REQUESTS)
    pipeline = _pipeline(
        meltano_env,
        tmp_path,
        sandbox,
        None,
        {"BRAZE_API_KEY": key, "PEAK_WAREHOUSE_URL": password_warehouse.url},
    )
    sys_dir = Path(meltano_env["MELTANO_SYS_DIR_ROOT"])
    secrets = {"Braze API key": key, "warehouse password": password_warehouse.password}

    observed = run_scan_kill_rerun(pipeline, sandbox, sys_dir, secrets, tmp_path / "runs.log")

    _assert_scans_clean_and_kill_left_config(observed, sandbox.url)
    # The tap read the warehouse PEAK_WAREHOUSE_URL names (its sqlalchemy_url_env), not
    # the sample it falls back to without a URL: Braze holds exactly its customers.
    held = set(sandbox_attributes(sandbox))
    assert held == password_warehouse.customers, (
        f"Braze holds {len(held)} customers, the warehouse in PEAK_WAREHOUSE_URL "
        f"{len(password_warehouse.customers)}: the tap did not read its URL from the variable "
        "its sqlalchemy_url_env setting names"
    )


def test_warehouse_password_given_as_a_meltano_setting_is_on_disk_during_a_run_and_after_kill_9(
    start_sandbox, meltano_env, tmp_path, password_warehouse
):
    # The control: the same run with the URL in the tap's `sqlalchemy_url` setting, the way
    # the production setup avoids. The scans find the password, so they can find one.
    key = _new_secret("braze-key")
    sandbox = start_sandbox(api_key=key, fail_after_requests=HELD_AFTER_REQUESTS)
    pipeline = _pipeline(meltano_env, tmp_path, sandbox, None, {"BRAZE_API_KEY": key})
    pipeline.settings["TAP_PEAK_ATTRIBUTES_SQLALCHEMY_URL"] = password_warehouse.url
    sys_dir = Path(meltano_env["MELTANO_SYS_DIR_ROOT"])
    secrets = {"Braze API key": key, "warehouse password": password_warehouse.password}

    observed = run_scan_kill_rerun(pipeline, sandbox, sys_dir, secrets, tmp_path / "runs.log")

    assert observed.killed_returncode == -signal.SIGKILL, observed.rerun_output
    (tap_config,) = [path for path in observed.left_by_kill if path.name.startswith("tap.")]
    where = f"{tap_config.relative_to(sys_dir)}: warehouse password"
    assert where in observed.leaks_during
    assert where in observed.after_kill.leaks
    assert {leak.split(": ")[1] for leak in observed.leaks_during} == {"warehouse password"}
    assert set(sandbox_attributes(sandbox)) == password_warehouse.customers
