"""The container image, built and run: `meltano run` in a container against the sandbox.

`scripts/docker-image` installs and starts the Docker engine if needed, builds a local
Debian base (Docker Hub is out of reach here) and deploy/Dockerfile on it. The pipeline
then runs in a container as a deployment runs it: the image's own command, `--network
host` (the sandbox, moto's S3 server and PostgreSQL are on loopback), secrets only in the
variables the plugins read, state in S3 and the ledger in PostgreSQL, outside the
container. A second container from the same image finds the bookmark there and sends
nothing.

One test, so that one pytest worker owns the engine: it stops the engine afterwards if the
engine was not running before, and removes every container it made. If the engine cannot
be started, the test fails with scripts/docker-image's one line saying why.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from pipeline_harness import (
    PROJECT_ROOT,
    copy_sample_warehouse,
    expected_profiles,
    init_ledger,
    mismatches,
    sandbox_attributes,
    summarise,
)
from test_deploy_state_off_container import (  # the same S3 server and ledger database
    BUCKET,
    aws_environment,
    ledger_database,
    s3_server,
    stored_bookmark,
)

# A cold machine installs docker.io and mmdebstrap, builds the base and the image first:
# 7.5 minutes with both cores busy.
pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.timeout(1800)]

__all__ = ["ledger_database", "s3_server"]  # fixtures, used by name

SCRIPT = PROJECT_ROOT / "scripts" / "docker-image"
IMAGE = "peak-braze:test"
USER_ID = 10001  # the Dockerfile's USER
BRAZE_KEY = "braze-key-" + uuid.uuid4().hex
PG_PASSWORD = "ledger-password-" + uuid.uuid4().hex
BUILD_TIMEOUT_SECONDS = 1500
RUN_TIMEOUT_SECONDS = 600
# Names only on `docker run`'s command line: the values come from its environment, so they
# are in no process's arguments.
SECRET_VARIABLES = ("BRAZE_API_KEY", "PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def engine_answers() -> bool:
    try:
        return docker("version", "--format", "{{.Server.Version}}", timeout=30).returncode == 0
    except FileNotFoundError:  # no docker CLI yet: scripts/docker-image installs it
        return False


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """deploy/Dockerfile built by scripts/docker-image; the engine stopped after, if started."""
    was_running = engine_answers()
    try:
        built = subprocess.run(
            [str(SCRIPT)],
            env=os.environ | {"PEAK_BRAZE_IMAGE": IMAGE},
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_SECONDS,
            check=False,
        )
        if built.returncode != 0:
            lines = built.stderr.strip().splitlines() or [f"exit {built.returncode}"]
            pytest.fail(lines[-1], pytrace=False)
        assert built.stdout.strip() == IMAGE
        yield IMAGE
    finally:
        if not was_running:
            subprocess.run([str(SCRIPT), "stop"], timeout=120, check=False)


@pytest.fixture
def containers() -> Iterator[list[str]]:
    """Names for this test's containers; each one is removed afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        docker("rm", "--force", "--volumes", name)


def owned_directory(path: Path) -> Path:
    """A directory the container's user can write (a bind mount keeps the host's owner)."""
    path.mkdir(parents=True)
    os.chown(path, USER_ID, USER_ID)
    return path


def find_in_stream(stream: IO[bytes], needles: list[bytes]) -> tuple[set[str], set[bytes]]:
    """Member names of a tar stream, and which needles occur in any member's content."""
    names: set[str] = set()
    found: set[bytes] = set()
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for member in archive:
            names.add(member.name)
            if not member.isfile():
                continue
            extracted = archive.extractfile(member)
            assert extracted is not None
            content = extracted.read()
            found.update(needle for needle in needles if needle in content)
    return names, found


def test_the_image_runs_the_pipeline_as_its_user_with_state_and_ledger_outside_and_resends_nothing(
    image, containers, start_sandbox, s3_server, ledger_database, tmp_path
):
    sandbox = start_sandbox(api_key=BRAZE_KEY)
    warehouse_dir = owned_directory(tmp_path / "warehouse")
    warehouse = copy_sample_warehouse(warehouse_dir / "peak.sqlite")
    init_ledger(ledger_database, sandbox.url, BRAZE_KEY)
    prefix = f"container-{uuid.uuid4().hex[:8]}"
    aws = aws_environment(s3_server)
    secrets = {
        "BRAZE_API_KEY": BRAZE_KEY,
        "PGPASSWORD": PG_PASSWORD,
        "AWS_ACCESS_KEY_ID": aws["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": aws["AWS_SECRET_ACCESS_KEY"],
    }
    settings = {
        "MELTANO_STATE_BACKEND_URI": f"s3://{BUCKET}/{prefix}",
        "AWS_DEFAULT_REGION": aws["AWS_DEFAULT_REGION"],
        "AWS_ENDPOINT_URL_S3": s3_server,
        "PEAK_WAREHOUSE_URL": "sqlite:////warehouse/peak.sqlite",
        "TARGET_BRAZE_REST_ENDPOINT": sandbox.url,
        "TARGET_BRAZE_LEDGER_URL": ledger_database,
    }

    def run_container(output: Path) -> tuple[str, subprocess.CompletedProcess[str]]:
        name = f"peak-braze-test-{uuid.uuid4().hex[:10]}"
        containers.append(name)
        command = ["docker", "run", "--name", name, "--network", "host"]
        for variable in SECRET_VARIABLES:
            command += ["--env", variable]
        for variable, value in settings.items():
            command += ["--env", f"{variable}={value}"]
        command += [
            "--volume", f"{warehouse_dir}:/warehouse",
            "--volume", f"{output}:/project/output",
            image,
        ]  # fmt: skip
        result = subprocess.run(
            command,
            env=os.environ | secrets,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_SECONDS,
            check=False,
        )
        return name, result

    # The image's own command, in a container that starts with no state of its own.
    first_output = owned_directory(tmp_path / "output-1")
    first_name, first = run_container(first_output)

    assert first.returncode == 0, (first.stdout + first.stderr)[-6000:]
    problems = mismatches(expected_profiles(warehouse), sandbox_attributes(sandbox))
    assert not problems, summarise(problems)
    report_path = first_output / "run-report.json"
    report = json.loads(report_path.read_text())
    assert report["records_in"] == len(expected_profiles(warehouse))
    assert report["outcome"] == "success", report
    # The run's own files are the declared user's: the process was never root.
    assert report_path.stat().st_uid == USER_ID
    user = docker("inspect", "--format", "{{.Config.User}}", first_name).stdout.strip()
    assert user == f"{USER_ID}:{USER_ID}"
    assert stored_bookmark(s3_server, prefix) is not None, "the bookmark is in S3"

    # No secret in what the container printed, nor anywhere on its disk (the image's
    # files and what the run wrote); none of the plugins' tests in the image.
    for variable, value in secrets.items():
        assert value not in first.stdout + first.stderr, f"{variable}'s value in the output"
    exported = subprocess.Popen(["docker", "export", first_name], stdout=subprocess.PIPE)
    assert exported.stdout is not None
    names, found = find_in_stream(exported.stdout, [v.encode() for v in secrets.values()])
    assert exported.wait(timeout=RUN_TIMEOUT_SECONDS) == 0
    assert not found, "a secret on the container's disk"
    assert "project/target-braze/target_braze/target.py" in names
    plugin_tests = ("project/tap-peak-attributes/tests", "project/target-braze/tests")
    assert not [name for name in names if name.startswith(plugin_tests)]

    # A second container from the same image: the bookmark in S3 and the ledger in
    # PostgreSQL are all it shares with the first. Nothing changed, so nothing is sent.
    requests_before = sandbox.stats()["requests"]
    second_output = owned_directory(tmp_path / "output-2")
    _, second = run_container(second_output)

    assert second.returncode == 0, (second.stdout + second.stderr)[-6000:]
    assert sandbox.stats()["requests"] == requests_before
    again = json.loads((second_output / "run-report.json").read_text())
    assert (again["records_in"], again["requests"], again["data_points"]) == (0, 0, 0), again
    for variable, value in secrets.items():
        assert value not in second.stdout + second.stderr, f"{variable}'s value in the output"
