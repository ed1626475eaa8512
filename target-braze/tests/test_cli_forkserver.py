"""The tests' fork server (tests/cli_forkserver.py) runs a CLI as `python -m` would.

Most CLI runs of the unit and integration tests are children of it; these tests hold it to
what those tests assume: the same exit code, output and error line as a fresh interpreter,
the run's own environment, and a real process of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cli_forkserver
import pytest
from braze_sandbox.testing import SandboxProcess
from braze_target_harness import customers, schema_message, state, target_config

MESSAGES = [schema_message(), *customers(3), state("s1")]


def both_ways(
    module: str, args: list[str], stdin: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    environment = {**os.environ, **(env or {})}
    forked = cli_forkserver.run(module, args, input=stdin, env=environment, timeout=120)
    return forked, fresh_run(module, args, stdin, environment)


def fresh_run(
    module: str, args: list[str], stdin: str, env: dict[str, str]
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def write_config(path: Path, config: dict) -> list[str]:
    path.write_text(json.dumps(config))
    return ["--config", str(path)]


def held(braze: SandboxProcess) -> dict[str, dict]:
    return {p["external_id"]: p.get("custom_attributes", {}) for p in braze.profiles()}


def test_a_sync_answers_as_python_m_does(braze: SandboxProcess, tmp_path: Path) -> None:
    """The same messages, each way on its own ledger: the same STATE, the same profiles."""
    stdin = "".join(json.dumps(m) + "\n" for m in MESSAGES)
    runs, profiles = [], []
    for name in ("forked", "fresh"):
        (tmp_path / name).mkdir()
        args = write_config(tmp_path / f"{name}.json", target_config(braze, tmp_path / name))
        if name == "forked":
            runs.append(cli_forkserver.run("target_braze", args, input=stdin, timeout=120))
        else:
            runs.append(fresh_run("target_braze", args, stdin, dict(os.environ)))
        profiles.append(held(braze))
        braze.reset()
    forked, fresh = runs
    assert forked.returncode == fresh.returncode == 0, (forked.stderr, fresh.stderr)
    assert forked.stdout == fresh.stdout
    assert [json.loads(line) for line in forked.stdout.splitlines()] == [state("s1")["value"]]
    assert profiles[0] == profiles[1]
    assert sorted(profiles[0]) == ["c0", "c1", "c2"]


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("target_braze", ["--config", "{dir}/missing.json"]),
        ("target_braze", ["--about", "--format", "json"]),
        ("target_braze", ["--no-such-option"]),
        ("tap_peak_attributes", ["--config", "{dir}/missing.json"]),
        ("tap_peak_attributes", ["--version"]),
    ],
)
def test_errors_and_answers_are_those_of_python_m(module: str, args: list[str], tmp_path) -> None:
    forked, fresh = both_ways(module, [a.format(dir=tmp_path) for a in args], "")
    assert forked.returncode == fresh.returncode
    assert forked.stdout == fresh.stdout
    assert forked.stderr == fresh.stderr


def test_a_run_sees_its_own_environment(braze: SandboxProcess, tmp_path: Path) -> None:
    """An api_key_env variable set for the run only: the forked child reads the run's."""
    config = target_config(braze, tmp_path, api_key_env="FORKSERVER_TEST_KEY")
    del config["api_key"]
    args = write_config(tmp_path / "config.json", config)
    stdin = "".join(json.dumps(m) + "\n" for m in MESSAGES)
    without, fresh_without = both_ways("target_braze", args, stdin)
    assert without.returncode == fresh_without.returncode == 1
    assert "FORKSERVER_TEST_KEY" in without.stderr.splitlines()[-1]
    assert without.stderr.splitlines()[-1] == fresh_without.stderr.splitlines()[-1]
    with_key = cli_forkserver.run(
        "target_braze",
        args,
        input=stdin,
        env={**os.environ, "FORKSERVER_TEST_KEY": braze.api_key},
        timeout=120,
    )
    assert with_key.returncode == 0, with_key.stderr
    assert sorted(held(braze)) == ["c0", "c1", "c2"]


def test_each_run_is_a_process_of_its_own(braze: SandboxProcess, tmp_path: Path) -> None:
    """A run's pid is new, and a run killed by a signal reports it as subprocess does."""
    server = cli_forkserver.ForkServer.shared()
    script = tmp_path / "stdin"
    script.write_text("")
    pids = []
    for _ in range(2):
        with open(script, "rb") as stdin, open(tmp_path / "out", "wb") as out:
            child = server.spawn(
                "target_braze", ["--version"], (stdin.fileno(), out.fileno(), out.fileno()), {}
            )
            assert child.wait(120) == 0
            pids.append(child.pid)
    assert len(set(pids)) == 2
    assert server.process.pid not in pids
    assert os.getpid() not in pids
    read, write = os.pipe()  # stdin that never ends: the run waits until killed
    args = write_config(tmp_path / "config.json", target_config(braze, tmp_path))
    try:
        with open(tmp_path / "out", "wb") as out:
            child = server.spawn(
                "target_braze",
                args,
                (read, out.fileno(), out.fileno()),
                dict(os.environ),
            )
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(120) == -signal.SIGKILL
    finally:
        os.close(read)
        os.close(write)


def test_pythonpath_of_a_run_gets_a_fresh_interpreter(tmp_path: Path) -> None:
    """A module on the run's PYTHONPATH shadows the installed one, as in `python -m`."""
    shadow = tmp_path / "shadow" / "target_braze"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    (shadow / "__main__.py").write_text("print('the shadow')\n")
    env = {**os.environ, "PYTHONPATH": str(shadow.parent)}
    done = cli_forkserver.run("target_braze", [], env=env, timeout=120)
    assert (done.returncode, done.stdout) == (0, "the shadow\n")


def test_the_server_ends_when_its_client_is_killed(tmp_path: Path) -> None:
    """A test process killed by kill -9 leaves no server behind (nor its pipes held open)."""
    client = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; sys.path.insert(0, sys.argv[1]); import cli_forkserver; "
            "print(cli_forkserver.ForkServer.shared().process.pid, flush=True); time.sleep(600)",
            str(Path(cli_forkserver.__file__).parent),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdout is not None
    server = int(client.stdout.readline())
    client.kill()
    client.wait()
    # Not a child of this process: gone once /proc no longer lists it (or only as a zombie
    # of init's). A hang guard, not the verdict: the loop ends as soon as it is gone.
    status = Path(f"/proc/{server}/status")
    for _ in range(6000):
        if not status.exists() or "State:\tZ" in status.read_text():
            break
        time.sleep(0.01)
    else:
        pytest.fail(f"the fork server {server} outlived its killed client by a minute")
