"""A Pipes message reader that never hands Dagster half a message.

Dagster's own file reader (`PipesTempFileMessageReader`, the default of
`PipesSubprocessClient`) tails the message file with `readline()`, which returns whatever
the writer has put there so far. A message being written when the reader catches up is
read as a fragment: `json.loads` fails, the reader thread dies, and every later message is
lost, the launcher's report included ("the Meltano launcher reported nothing"). Measured on
this machine with both cores busy: 2 to 6 torn lines in 30,000 messages of 200-600 bytes,
and about 1 in 12 for messages of up to 200 kB. It cost a CI run.

This reader uses the same file protocol (the external side keeps `open_dagster_pipes()`'s
default writer), built on Dagster's public `PipesMessageReader`, and passes on only lines
that end in a newline; a fragment waits for the rest of its line.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from threading import Event, Thread
from typing import BinaryIO

from dagster import PipesMessageHandler, PipesMessageReader
from dagster_pipes import PipesDefaultMessageWriter, PipesParams

_FILE_NAME = "messages"
READ_SIZE = 1 << 16
POLL_SECONDS = 0.01


class TornMessageError(ValueError):
    """The writer's last message never got its newline: the external process died mid-write."""


def complete_lines(
    stream: BinaryIO, should_stop: Callable[[], bool], poll_seconds: float = POLL_SECONDS
) -> Iterator[bytes]:
    """Each complete line appended to `stream` (without its newline), until `should_stop()`.

    Bytes after the last newline are kept until their newline arrives. Once `should_stop()`
    is true, what the stream still holds is read out; a fragment left at the end raises
    `TornMessageError` rather than being dropped in silence.
    """
    pending = b""
    while True:
        stopping = should_stop()  # read before draining: nothing written before it is missed
        chunk = stream.read(READ_SIZE)
        if chunk:
            *lines, pending = (pending + chunk).split(b"\n")
            yield from (line for line in lines if line.strip())
            continue
        if stopping:
            if pending.strip():
                msg = (
                    f"the last Pipes message has no newline ({len(pending)} bytes): "
                    f"{pending[:80]!r}"
                )
                raise TornMessageError(msg)
            return
        time.sleep(poll_seconds)


class CompleteLineFileMessageReader(PipesMessageReader):
    """Reads Pipes messages from a temporary file, one complete line at a time."""

    @contextmanager
    def read_messages(self, handler: PipesMessageHandler) -> Iterator[PipesParams]:
        """Tail a fresh temporary file in a thread for the session's lifetime."""
        closed = Event()
        with tempfile.TemporaryDirectory(prefix="peak-braze-pipes-") as directory:
            path = os.path.join(directory, _FILE_NAME)
            open(path, "wb").close()  # the writer appends; the reader opens it first
            thread = Thread(target=self._read, args=(path, handler, closed), daemon=True)
            thread.start()
            try:
                yield {
                    PipesDefaultMessageWriter.FILE_PATH_KEY: path,
                    PipesDefaultMessageWriter.INCLUDE_STDIO_IN_MESSAGES_KEY: False,
                }
            finally:
                closed.set()
                thread.join()

    @staticmethod
    def _read(path: str, handler: PipesMessageHandler, closed: Event) -> None:
        try:
            with open(path, "rb") as stream:
                for line in complete_lines(stream, closed.is_set):
                    handler.handle_message(json.loads(line))
        except Exception:
            # As Dagster's own readers do: the exception becomes an engine event of the step.
            handler.report_pipes_framework_exception(
                f"{CompleteLineFileMessageReader.__name__} reader thread", sys.exc_info()
            )
            raise

    def no_messages_debug_text(self) -> str:
        """Where the messages were expected, for Dagster's 'no messages' error."""
        return "Attempted to read messages from a local temporary file, one line each."
