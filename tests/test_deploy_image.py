"""The container image (deploy/Dockerfile), checked as a file.

tests/test_deploy_container.py builds the image and runs it. These checks need no engine:
hadolint finds nothing; every file the Dockerfile copies exists and is not excluded from
the build context by its ignore file, and no COPY can bring a plugin's tests in (the legacy
builder ignores that file); it runs as a non-root user from a slim Python 3.11 base by
default; its pins agree with the project's; and the command it names is one the project's
Meltano accepts (`meltano run --dry-run` of exactly that command).
"""

from __future__ import annotations

import fnmatch
import json
import shlex
import subprocess
from pathlib import Path

import pytest
from pipeline_harness import MELTANO, PROJECT_ROOT, VENV_BIN

DEPLOY = PROJECT_ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
# BuildKit reads `<Dockerfile>.dockerignore` beside a Dockerfile given with -f.
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
REQUIREMENTS = DEPLOY / "requirements.txt"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    result = []
    for line in joined:
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def ignore_patterns() -> list[str]:
    return [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def in_build_context(relative: str) -> bool:
    """Whether the ignore file leaves `relative` in the context (last match decides).

    A pattern matching a parent directory matches everything under it, as in Docker.
    """
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for pattern in ignore_patterns():
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        body = body.strip("/")
        if any(fnmatch.fnmatchcase(candidate, body) for candidate in candidates):
            included = negated
    return included


def copy_sources() -> list[str]:
    sources = []
    for keyword, arguments in instructions():
        if keyword not in {"COPY", "ADD"}:
            continue
        words = [w for w in shlex.split(arguments) if not w.startswith("--")]
        sources.extend(words[:-1])
    return sources


def test_hadolint_finds_nothing():
    result = subprocess.run(
        [str(VENV_BIN / "hadolint"), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_every_file_the_dockerfile_copies_exists_and_is_in_the_build_context():
    sources = copy_sources()
    assert sources, "the Dockerfile copies nothing"
    for source in sources:
        assert (PROJECT_ROOT / source).exists(), f"COPY {source}: no such file in the repository"
        assert in_build_context(source), f"COPY {source}: excluded by {DOCKERIGNORE.name}"


def test_the_plugins_packages_reach_the_build_but_their_tests_and_caches_do_not():
    for needed in (
        "tap-peak-attributes/pyproject.toml",
        "tap-peak-attributes/tap_peak_attributes/tap.py",
        "tap-peak-attributes/tap_peak_attributes/data/peak_warehouse.sqlite",
        "target-braze/pyproject.toml",
        "target-braze/target_braze/target.py",
    ):
        assert (PROJECT_ROOT / needed).exists(), needed
        assert in_build_context(needed), needed
    for left_out in (
        "tap-peak-attributes/tests/test_peak_api.py",
        "target-braze/tests/conftest.py",
        "target-braze/target_braze/__pycache__/target.cpython-311.pyc",
        ".venv/bin/python",
        ".meltano/meltano.db",
        "output/run-report.json",
        ".env",
    ):
        assert not in_build_context(left_out), left_out


def test_the_base_is_slim_python_3_11_by_default_and_the_container_runs_as_a_non_root_user():
    steps = instructions()
    bases = [args for keyword, args in steps if keyword == "FROM"]
    assert bases == ["${BASE_IMAGE}"]
    arguments = [args for keyword, args in steps if keyword == "ARG"]
    assert steps.index(("ARG", arguments[0])) < steps.index(("FROM", bases[0]))
    assert arguments[0] == "BASE_IMAGE=python:3.11-slim-bookworm"
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users, "no USER: the container would run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit(), "numeric, so Kubernetes' runAsNonRoot can check it"
    assert int(user) != 0


def test_no_copy_brings_a_plugins_tests_into_the_image_whatever_the_ignore_file():
    for source in copy_sources():
        assert source not in {"tap-peak-attributes/", "target-braze/", "."}, source
        assert "/tests" not in f"/{source}", source


def test_the_image_installs_pinned_meltano_with_the_s3_state_backend_as_the_project_does():
    pins = [
        line.split("#")[0].strip()
        for line in REQUIREMENTS.read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    assert all("==" in pin for pin in pins), pins
    meltano_pin = next(pin for pin in pins if pin.startswith("meltano"))
    assert meltano_pin.startswith("meltano[s3]==")
    project_pins = (PROJECT_ROOT / "requirements-dev.txt").read_text().splitlines()
    assert f"meltano=={meltano_pin.split('==')[1]}" in project_pins


def test_the_plugins_are_installed_at_build_time():
    runs = " ".join(args for keyword, args in instructions() if keyword == "RUN")
    assert "meltano install --plugin-type extractor tap-peak-attributes" in runs
    assert "meltano install --plugin-type loader target-braze" in runs


def default_command() -> list[str]:
    commands = [args for keyword, args in instructions() if keyword == "CMD"]
    assert len(commands) == 1
    command = json.loads(commands[0])  # exec form: no shell between Docker and Meltano
    assert isinstance(command, list)
    return command


def test_the_default_command_runs_the_pipeline_without_installing_anything():
    assert default_command() == [
        "meltano",
        "run",
        "--no-install",
        "tap-peak-attributes",
        "target-braze",
    ]


def meltano_dry_run(
    arguments: list[str], meltano_env: dict[str, str]
) -> subprocess.CompletedProcess:
    env = meltano_env | {"MELTANO_ENVIRONMENT": "prod"}
    return subprocess.run(
        [MELTANO, *arguments[1:2], "--dry-run", *arguments[2:]],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_project_accepts_the_default_command(meltano_env):
    result = meltano_dry_run(default_command(), meltano_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "would have run block 1/1" in result.stdout + result.stderr


@pytest.mark.parametrize("plugin", ["tap-not-in-the-project", "target-not-in-the-project"])
def test_control_a_command_naming_a_plugin_the_project_lacks_is_refused(meltano_env, plugin):
    command = ["meltano", "run", "--no-install", "tap-peak-attributes", "target-braze"]
    command[3 if plugin.startswith("tap") else 4] = plugin
    result = meltano_dry_run(command, meltano_env)
    assert result.returncode != 0
