"""The Pipes message reader of the Dagster code location: every message arrives whole.

Dagster's default file reader hands its handler whatever `readline()` returned, a message
still being written included; that lost the launcher's report in a CI run. These tests pin
down the reader that replaced it: fragments wait for their newline, a fragment left at the
end is an error, and through a real `PipesSubprocessClient` and a real external process
every message of a burst of large ones arrives, in order.
"""

from __future__ import annotations

import io
import sys
import textwrap
from pathlib import Path

import pytest
from pipeline_harness import PROJECT_ROOT

DEPLOY_DAGSTER = PROJECT_ROOT / "deploy" / "dagster"
if str(DEPLOY_DAGSTER) not in sys.path:
    sys.path.insert(0, str(DEPLOY_DAGSTER))

from dagster import PipesSubprocessClient, job, op  # noqa: E402
from peak_braze_dagster.definitions import build_definitions  # noqa: E402
from peak_braze_dagster.pipes_reader import (  # noqa: E402
    CompleteLineFileMessageReader,
    TornMessageError,
    complete_lines,
)
from peak_braze_dagster.workspaces import load_settings  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore::dagster_shared.utils.warnings.PreviewWarning",
    "ignore::dagster_shared.utils.warnings.BetaWarning",
)


class GrowingFile(io.RawIOBase):
    """A file a writer is appending to: each read returns the next written piece, then b''
    (the reader caught up with the writer) until the next piece is written."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = [piece for written in pieces for piece in (written, b"")]

    def read(self, size: int = -1) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""

    def readable(self) -> bool:
        return True

    def written_all(self) -> bool:
        return not self.pieces


def test_a_message_read_while_being_written_waits_for_the_rest_of_its_line():
    stream = GrowingFile([b'{"method": "log", "par', b'ams": {}}\n{"a"', b": 1}\n", b"\n"])

    lines = list(complete_lines(stream, stream.written_all, poll_seconds=0))  # type: ignore[arg-type]

    assert lines == [b'{"method": "log", "params": {}}', b'{"a": 1}']


def test_what_is_written_before_the_session_closes_is_read_after_it():
    stream = GrowingFile([b'{"last": true}\n'])

    # Closed from the start: the reader still drains the file before it stops.
    assert list(complete_lines(stream, lambda: True)) == [b'{"last": true}']  # type: ignore[arg-type]


def test_a_fragment_left_when_the_session_closes_is_an_error_not_a_silent_loss():
    stream = GrowingFile([b'{"ok": 1}\n{"torn": ', b'"mess'])

    lines = complete_lines(stream, stream.written_all, poll_seconds=0)  # type: ignore[arg-type]

    assert next(lines) == b'{"ok": 1}'
    with pytest.raises(TornMessageError, match=r"no newline \(14 bytes\)"):
        next(lines)


EXTERNAL = textwrap.dedent(
    """
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        for index in range(pipes.extras["messages"]):
            size = 100 + index * 7919 % 150_000
            pipes.report_custom_message({"index": index, "payload": "x" * size})
    """
)


def test_a_burst_of_large_messages_from_a_real_process_all_arrive_in_order(tmp_path: Path):
    script = tmp_path / "external.py"
    script.write_text(EXTERNAL)
    count = 400
    received: list[int] = []

    @op
    def burst(context) -> None:  # type: ignore[no-untyped-def]
        client = PipesSubprocessClient(message_reader=CompleteLineFileMessageReader())
        invocation = client.run(
            context=context, command=[sys.executable, str(script)], extras={"messages": count}
        )
        for message in invocation.get_custom_messages():
            assert len(message["payload"]) == 100 + message["index"] * 7919 % 150_000
            received.append(message["index"])

    @job
    def pipes_burst() -> None:
        burst()

    assert pipes_burst.execute_in_process().success
    assert received == list(range(count))


def test_the_code_location_runs_meltano_through_the_complete_line_reader():
    settings = load_settings(DEPLOY_DAGSTER / "workspaces.yml")
    client = build_definitions(settings).resources["pipes_subprocess_client"]

    assert isinstance(client, PipesSubprocessClient)
    assert isinstance(client.message_reader, CompleteLineFileMessageReader)
