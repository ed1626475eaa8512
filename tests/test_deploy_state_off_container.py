"""State off the container: Meltano's S3 state backend and the ledger in PostgreSQL.

Containers are temporary. A container's project is a copy of the image's: meltano.yml and
the plugins installed at build time, no run records, no state. Here each "container" is a
fresh copy of meltano.yml in its own directory, with no `.meltano/`: its Meltano system
directory is new and empty but for the installed plugin venvs (linked in, as an image
layer holds them). State goes to an S3 bucket on a local S3-compatible server (moto's
server mode), reached through the standard AWS variables, as a container with a role
reaches S3; the delivery ledger goes to PostgreSQL, its password (unused by the trust-auth
test server) in PGPASSWORD.

The first container syncs until Braze (the sandbox's fail point) fails every request past
the sixth: the first 450 records are confirmed and their STATE is in S3, the run is held
retrying, and it is killed with SIGKILL. A second container, from a fresh copy, sees the
stored bookmark (`meltano state get`), runs without `--force` (no run records survive a
container) and sends exactly the rows after the bookmark; the sandbox ends equal to the
warehouse.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
import sqlalchemy as sa
from pipeline_harness import (
    MELTANO,
    PROJECT_ROOT,
    VENV_BIN,
    expected_profiles,
    generate_warehouse,
    init_ledger,
    mismatches,
    postgres_server_url,
    read_warehouse,
    rows_up_to,
    sandbox_attributes,
    summarise,
)

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

CUSTOMERS = 1_200  # 16 requests of 75
STATE_EVERY = 150  # records: the tap's STATE after every two requests' worth
HELD_AFTER_REQUESTS = 6  # 450 records confirmed, then Braze is down
BUCKET = "peak-braze-state"
STATE_ID = "prod:tap-peak-attributes-to-target-braze"
STREAM = "customer_attributes"
BRAZE_KEY = "braze-key-" + uuid.uuid4().hex[:8]
# Only bounds for something that neither progresses nor ends; no verdict depends on them.
STALL_SECONDS = 300
POLL_SECONDS = 0.1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def s3_server() -> Iterator[str]:
    """moto's S3-compatible server on loopback, with an empty bucket; its endpoint URL."""
    port = free_port()
    process = subprocess.Popen(
        [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = s3_client(endpoint)
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:  # not listening yet
                assert process.poll() is None, "moto_server exited"
                assert time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()
        process.wait(30)


def aws_environment(endpoint: str) -> dict[str, str]:
    """The default credential chain and endpoint, as a container's environment gives them."""
    return {
        "AWS_ACCESS_KEY_ID": "moto-access-key",
        "AWS_SECRET_ACCESS_KEY": "moto-secret-key",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": endpoint,
    }


def s3_client(endpoint: str) -> Any:
    env = aws_environment(endpoint)
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )


@pytest.fixture
def ledger_database() -> Iterator[str]:
    """A fresh PostgreSQL database for the ledger; dropped afterwards. Its URL, no password."""
    server = sa.make_url(postgres_server_url())
    name = f"deploy_ledger_{uuid.uuid4().hex[:10]}"
    conninfo = server.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name, password=None).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Container:
    """A fresh copy of the project: meltano.yml, and a system directory of its own."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.project = root / "project"
        self.project.mkdir(parents=True)
        shutil.copyfile(PROJECT_ROOT / "meltano.yml", self.project / "meltano.yml")
        self.sys_dir = root / "meltano-sys"
        self.sys_dir.mkdir()
        for plugin_type in ("extractors", "loaders"):
            (self.sys_dir / plugin_type).symlink_to(
                PROJECT_ROOT / ".meltano" / plugin_type, target_is_directory=True
            )
        self.report = root / "run-report.json"
        self.env = env | {
            "MELTANO_PROJECT_ROOT": str(self.project),
            "MELTANO_SYS_DIR_ROOT": str(self.sys_dir),
            "TARGET_BRAZE_RUN_REPORT_PATH": str(self.report),
        }

    def command(self, *args: str) -> list[str]:
        return [MELTANO, *args]

    def start(self, log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                self.command("run", "--no-install", "tap-peak-attributes", "target-braze"),
                cwd=self.project,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args),
            cwd=self.project,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=STALL_SECONDS,
            check=False,
        )


def stored_bookmark(endpoint: str, prefix: str) -> dict[str, Any] | None:
    """The stream's bookmark in the state object, completed merged with partial."""
    try:
        body = (
            s3_client(endpoint)
            .get_object(Bucket=BUCKET, Key=f"{prefix}/{STATE_ID}/state.json")["Body"]
            .read()
        )
    except Exception:
        return None
    stored = json.loads(body)
    for part in ("partial", "completed"):
        bookmark = ((stored.get(part) or {}).get("singer_state") or {}).get("bookmarks", {})
        if bookmark.get(STREAM, {}).get("replication_key_value"):
            return bookmark[STREAM]
    return None


def test_a_fresh_container_resumes_from_the_bookmark_in_s3_and_braze_ends_equal_to_the_warehouse(
    meltano_env, start_sandbox, s3_server, ledger_database, tmp_path
):
    sandbox = start_sandbox(api_key=BRAZE_KEY, fail_after_requests=HELD_AFTER_REQUESTS)
    warehouse = generate_warehouse(tmp_path / "warehouse.sqlite", CUSTOMERS, seed=2468)
    prefix = f"containers-{uuid.uuid4().hex[:8]}"
    base = {k: v for k, v in meltano_env.items() if not k.startswith("AWS_")}
    for own in ("MELTANO_SYS_DIR_ROOT", "MELTANO_ENVIRONMENT"):
        base.pop(own, None)
    env = (
        base
        | aws_environment(s3_server)
        | {
            "MELTANO_ENVIRONMENT": "prod",
            "MELTANO_STATE_BACKEND_URI": f"s3://{BUCKET}/{prefix}",
            # Secrets only in the variables the plugins read (never Meltano settings).
            "BRAZE_API_KEY": BRAZE_KEY,
            "PEAK_WAREHOUSE_URL": f"sqlite:///{warehouse}",
            "PGPASSWORD": "ledger-password-" + uuid.uuid4().hex[:6],
            "TARGET_BRAZE_REST_ENDPOINT": sandbox.url,
            "TARGET_BRAZE_LEDGER_URL": ledger_database,
            "TAP_PEAK_ATTRIBUTES_STATE_MESSAGE_FREQUENCY": str(STATE_EVERY),
            # meltano.yml's default BATCH mode, with a checkpoint every STATE_EVERY rows too
            # (each container's own directory: a path relative to its project).
            "TAP_PEAK_ATTRIBUTES_BATCH_CONFIG": json.dumps(
                {
                    "encoding": {"format": "jsonl", "compression": "none"},
                    "storage": {"root": "file://batch-files"},
                    "batch_size": STATE_EVERY,
                }
            ),
            # target-braze reads (and cleans) BATCH files only in the tap's directory.
            "TARGET_BRAZE_BATCH_FILES_DIR": "batch-files",
            "TARGET_BRAZE_BATCH_FILES_CLEANUP_DIR": "batch-files",
        }
    )

    # The prod environment requires an existing ledger: the deployment creates it once.
    init_ledger(ledger_database, sandbox.url, BRAZE_KEY)

    # Container 1: one request at a time, so the confirmed ones are the first six; held
    # retrying after them (30 s backoff, doubling) until killed.
    first = Container(tmp_path / "container-1", env | {
        "TARGET_BRAZE_MAX_CONCURRENT_REQUESTS": "1",
        "TARGET_BRAZE_RETRY_BACKOFF_SECONDS": "30",
    })  # fmt: skip
    process = first.start(tmp_path / "container-1.log")
    try:
        deadline = time.monotonic() + STALL_SECONDS
        while True:
            held = sandbox.stats()["injected"].get("failpoint", 0) > 0
            if held and stored_bookmark(s3_server, prefix) is not None:
                break
            assert process.poll() is None, (tmp_path / "container-1.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "neither held nor a bookmark in S3"
            time.sleep(POLL_SECONDS)
        assert process.poll() is None, "killed while alive, mid-sync"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert len(sandbox_attributes(sandbox)) < CUSTOMERS, "killed before the sync ended"
    sandbox.configure(fail_after_requests=0)

    # Container 2: a fresh copy; the only thing it shares with container 1 is S3 (and the
    # ledger database).
    second = Container(tmp_path / "container-2", env)
    assert not (second.project / ".meltano").exists()
    assert sorted(p.name for p in second.sys_dir.iterdir()) == ["extractors", "loaders"]
    seen = second.run("state", "get", STATE_ID)
    assert seen.returncode == 0, seen.stderr[-3000:]
    bookmark = json.loads(seen.stdout)["singer_state"]["bookmarks"][STREAM]
    stored = (bookmark["replication_key_value"], bookmark["replication_key_last_id"])
    already = rows_up_to(read_warehouse(warehouse), stored)
    assert 0 < len(already) < CUSTOMERS, stored

    resumed = second.run("run", "--no-install", "tap-peak-attributes", "target-braze")

    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-6000:]
    report = json.loads(second.report.read_text())
    assert report["records_in"] == CUSTOMERS - len(already)
    problems = mismatches(expected_profiles(warehouse), sandbox_attributes(sandbox))
    assert not problems, summarise(problems)
    final = stored_bookmark(s3_server, prefix)
    assert final is not None
    assert final["replication_key_last_id"] != stored[1]
    with psycopg.connect(
        sa.make_url(ledger_database)
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
    ) as connection:
        tables = connection.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert tables is not None
    assert tables[0] > 0, "the ledger is in PostgreSQL"
