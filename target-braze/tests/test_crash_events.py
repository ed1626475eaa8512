"""kill -9 at any moment duplicates no event: in flight before sent, unknown after a crash.

The target's CLI with the delivery ledger on sends 20,000 events; it is killed with SIGKILL
several times, each time once the sandbox has answered a randomly chosen number of that
run's requests (progress, never the clock), and rerun from the last STATE it emitted, as
a tap resumes from its bookmark. A last run goes to the end. The sandbox then holds no
event twice, and every event it lacks was named *delivery unknown* in some run's rejects.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from braze_sandbox.testing import SandboxProcess
from braze_target_harness import read_jsonl, schema_message, target_command, target_config

SEED = 20261207
EVENTS = 20_000
USERS = 2_000
STATE_EVERY = 500
KILLS = 6
# A run is killed once the sandbox answered K of its requests. With 75 events per request
# a whole run is about 270 requests, held 10-30 ms each with at most 2 in flight: K <= 60
# leaves far more requests than the run can send while the test polls.
KILL_AFTER_ANSWERED = (1, 60)
POLL_SECONDS = 0.005
RUN_TIMEOUT_SECONDS = 300
STREAM = "app_events"
MAPPING = {
    STREAM: {
        "object_type": "events",
        "event_name_property": "event",
        "time_property": "at",
        "identifier_property": "customer_id",
    }
}


def event_lines() -> list[tuple[str, int | None]]:
    """The tap's output: (line, None) for a record, (line, n) for the STATE after n records."""
    props = {
        "event_id": {"type": "string"},
        "customer_id": {"type": "string"},
        "event": {"type": "string"},
        "at": {"type": "string", "format": "date-time"},
    }
    schema = schema_message(STREAM, props, key="event_id")
    schema.pop("bookmark_properties", None)
    lines: list[tuple[str, int | None]] = []
    for i in range(EVENTS):
        record = {
            "event_id": f"e{i}",
            "customer_id": f"u{i % USERS}",
            "event": "page_view",
            "at": f"2026-12-0{1 + i % 7}T{i % 24:02d}:{i % 60:02d}:00Z",
        }
        lines.append((json.dumps({"type": "RECORD", "stream": STREAM, "record": record}), None))
        if (i + 1) % STATE_EVERY == 0:
            value = {"bookmarks": {STREAM: {"position": i + 1}}}
            lines.append((json.dumps({"type": "STATE", "value": value}), i + 1))
    return [(json.dumps(schema), None), *lines]


def input_from(lines: list[tuple[str, int | None]], position: int, path: Path) -> Path:
    """The tap's output resumed after the STATE of `position` records (0: from the start)."""
    start = 0
    for index, (_, after) in enumerate(lines):
        if after == position:
            start = index + 1
    body = [lines[0][0]] + [line for line, _ in lines[max(start, 1) :]]
    path.write_text("\n".join(body) + "\n")
    return path


def last_position(stdout: Path, position: int) -> int:
    """The bookmark of the last whole STATE the run emitted (`position` if none).

    A target writes each STATE's value as one line; a kill may cut the last one short,
    which a tap's runner would ignore too.
    """
    for line in stdout.read_text().splitlines():
        try:
            position = json.loads(line)["bookmarks"][STREAM]["position"]
        except ValueError:
            continue
    return position


def answered(braze: SandboxProcess) -> int:
    return sum(braze.stats()["by_status"].values())


def wait_until_quiet(braze: SandboxProcess) -> None:
    """A killed run's requests still in the sandbox finish before the next run starts."""
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        stats = braze.stats()
        if stats["requests"] == sum(stats["by_status"].values()):
            return
        time.sleep(POLL_SECONDS)
    raise AssertionError(f"the sandbox still has requests in flight: {braze.stats()}")


def run(
    config_path: Path, stdin: Path, workdir: Path, braze: SandboxProcess, kill_after: int | None
) -> tuple[int, Path, Path]:
    """One run of the target's CLI; killed with SIGKILL once `kill_after` requests answered."""
    stdout, stderr = workdir / "stdout", workdir / "stderr"
    before = answered(braze)
    with stdin.open("rb") as given, stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(target_command(config_path), stdin=given, stdout=out, stderr=err)
        deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
        try:
            while process.poll() is None and time.monotonic() < deadline:
                if kill_after is not None and answered(braze) - before >= kill_after:
                    process.send_signal(signal.SIGKILL)
                    break
                time.sleep(POLL_SECONDS)
            returncode = process.wait(timeout=RUN_TIMEOUT_SECONDS)
        finally:
            if process.poll() is None:
                process.kill()
    return returncode, stdout, stderr


def test_kill_9_at_random_moments_duplicates_no_event(braze, tmp_path: Path) -> None:
    braze.configure(latency_ms=[10, 30])
    config: dict[str, Any] = target_config(
        braze,
        tmp_path,
        stream_mappings=MAPPING,
        max_concurrent_requests=2,
        max_objects_per_request=75,
    )
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    lines = event_lines()
    rng = random.Random(SEED)
    position = 0
    killed = 0
    stranded = 0  # events a killed run left in flight, as the next run's warning counts them
    for trial in range(KILLS + 1):
        workdir = tmp_path / f"run-{trial}"
        workdir.mkdir()
        stdin = input_from(lines, position, workdir / "input.jsonl")
        kill_after = rng.randint(*KILL_AFTER_ANSWERED) if trial < KILLS else None
        returncode, stdout, stderr = run(config_path, stdin, workdir, braze, kill_after)
        wait_until_quiet(braze)
        warning = re.search(r"Ledger: (\d+) events/purchases were in flight", stderr.read_text())
        stranded += int(warning[1]) if warning else 0
        if kill_after is None:
            assert returncode == 0, stderr.read_text()[-3000:]
        else:
            assert returncode == -signal.SIGKILL, (
                f"run {trial} ended ({returncode}) before the sandbox answered {kill_after} of "
                f"its requests: the kill interrupted nothing\n{stderr.read_text()[-3000:]}"
            )
            killed += 1
        position = last_position(stdout, position)

    assert killed == KILLS
    assert stranded > 0, "no kill left an event in flight: the crash proved nothing"
    assert position == EVENTS  # the last run went to the end
    copies = Counter(e["properties"]["event_id"] for e in braze.events())
    duplicated = {event: n for event, n in copies.items() if n > 1}
    assert not duplicated, f"{len(duplicated)} events reached Braze more than once"
    absent = {f"e{i}" for i in range(EVENTS)} - set(copies)
    named = {
        r["record"]["event_id"]
        for r in read_jsonl(tmp_path / "rejects.jsonl")
        if r["error_type"] == "DELIVERY_UNKNOWN" and r["reason"].startswith("delivery unknown: ")
    }
    missing = sorted(absent - named)
    assert not missing, f"{len(missing)} absent events never named delivery unknown: {missing[:5]}"
