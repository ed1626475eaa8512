"""Fixtures of the end-to-end suite: installed plugins, sandboxes, isolated pipelines."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from braze_sandbox.testing import SandboxProcess
from pipeline_harness import (
    Pipeline,
    base_environment,
    ensure_plugins_installed,
    private_meltano_directory,
)


@pytest.fixture(scope="session")
def meltano_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Installed plugins and the base environment of every `meltano run` of the session."""
    ensure_plugins_installed()
    return base_environment(private_meltano_directory(tmp_path_factory.mktemp("meltano-sys")))


@pytest.fixture
def start_sandbox() -> Iterator[Callable[..., SandboxProcess]]:
    """Start a Braze sandbox on a random port with the given options; stopped after the test."""
    started: list[SandboxProcess] = []

    def start(**options: Any) -> SandboxProcess:
        sandbox = SandboxProcess(**options).start()
        started.append(sandbox)
        return sandbox

    yield start
    for sandbox in started:
        sandbox.stop()


@pytest.fixture
def make_pipeline(meltano_env: dict[str, str], tmp_path: Path) -> Callable[..., Pipeline]:
    """Build a `Pipeline` with its own state, outputs and state id, under tmp_path."""
    count = 0

    def make(sandbox: SandboxProcess, warehouse: Path | None = None, **kwargs: Any) -> Pipeline:
        nonlocal count
        count += 1
        return Pipeline(
            workdir=tmp_path / f"pipeline-{count}",
            base_env=meltano_env,
            sandbox_url=sandbox.url,
            api_key=sandbox.api_key,
            warehouse=warehouse,
            **kwargs,
        )

    return make


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of a `test_deploy_*.py` file `deploy` (scripts/test --quick skips them)."""
    for item in items:
        if item.path.name.startswith("test_deploy_"):
            item.add_marker(pytest.mark.deploy)
