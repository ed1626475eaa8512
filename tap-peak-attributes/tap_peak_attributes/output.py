"""The tap's stdout: Singer messages encoded by msgspec and written in large blocks.

`meltano run` relays the tap's output to the target line by line, and every pipe write
wakes it up. singer-sdk's writers flush after every message, so each RECORD costs the
relay a wake-up of its own. This writer keeps RECORD lines in a buffer and writes the
buffer out when any other message (SCHEMA, STATE, BATCH, ACTIVATE_VERSION) is written,
when `BLOCK_BYTES` are buffered (a memory bound), and at exit. A STATE therefore always
reaches the pipe after the records it covers, in the same write.

No line is lost or torn:

- The buffer only ever holds whole lines: a record that fails to encode is cut off again.
- A signal never writes (see `stop`): singer-sdk's own handler writes STATE from inside
  the signal handler, which re-enters stdout when the signal arrives while a write to a
  full pipe is blocked. Here the handler raises `TapStopped` at once, or, inside a
  write, right after that write; `__main__` then writes the buffer and the last STATE.
- A broken pipe (the reader is gone) ends the tap with one `OutputClosed` line; fd 1 is
  pointed at /dev/null so Python's own exit does not print a second error.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
import typing as t
import weakref

import msgspec
from singer_sdk.singerlib.encoding.base import GenericSingerWriter, SingerMessageType
from typing_extensions import override

from tap_peak_attributes.errors import TapPeakError, TapStopped

if t.TYPE_CHECKING:
    from singer_sdk.singerlib.encoding.simple import Message

#: Buffered bytes that trigger a write even before the next STATE (about 2,500 records).
BLOCK_BYTES = 1 << 20


def _encode_fallback(value: t.Any) -> t.Any:
    # What singer-sdk's msgspec writer does with types msgspec does not know.
    return value.isoformat(sep="T") if isinstance(value, dt.datetime) else str(value)


#: The one JSON encoder of the tap (messages and batch files): decimals as JSON numbers,
#: as singer-sdk's msgspec writer writes them.
ENCODER = msgspec.json.Encoder(enc_hook=_encode_fallback, decimal_format="number")


class OutputClosed(TapPeakError):
    """The reader of stdout went away (broken pipe): nothing more can be delivered."""


def record_prefix(stream: str) -> bytes:
    """The bytes of a RECORD line before its record: `{"type":"RECORD","stream":...,"record":`."""
    return b'{"type":"RECORD","stream":' + ENCODER.encode(stream) + b',"record":'


def record_suffix(time_extracted: dt.datetime, version: int | None = None) -> bytes:
    """The bytes of a RECORD line after its record, in singer-sdk's key order."""
    version_part = b"" if version is None else b',"version":' + ENCODER.encode(version)
    return version_part + b',"time_extracted":' + ENCODER.encode(time_extracted) + b"}\n"


_OUTPUTS: weakref.WeakSet[SingerOutput] = weakref.WeakSet()


def flush_all() -> None:
    """Write every writer's buffer (the exit path of `__main__`)."""
    for output in list(_OUTPUTS):
        output.cut_partial_line()
        output.flush()


class SingerOutput(GenericSingerWriter[bytes, "Message"]):
    """Buffered Singer message writer for stdout (see the module docstring)."""

    def __init__(self) -> None:
        """Start with an empty buffer; nothing is written until a flush."""
        _OUTPUTS.add(self)
        self._buffer = bytearray()
        self._written = 0  # bytes of the buffer already written (a write in progress)
        self._writing = False
        self._pending_stop: TapStopped | None = None
        self._holding = 0  # inside `holding_stop`: a stop waits for its end
        self._closed = False
        self._fd: int | None = None  # stdout's descriptor, when writing to it directly
        self.messages_written = 0

    # --- encoding -------------------------------------------------------------------

    @override
    def serialize_message(self, message: Message) -> bytes:
        """One JSON line; records are written through `write_record`, not this."""
        return ENCODER.encode(message.to_dict()) + b"\n"

    @override
    def write_message(self, message: Message) -> None:
        """Buffer a message; anything but a RECORD is written out at once, with the buffer."""
        self._append(self.serialize_message(message))
        if message.type != SingerMessageType.RECORD or len(self._buffer) >= BLOCK_BYTES:
            self.flush()

    def write_record(self, prefix: bytes, record: t.Mapping[str, t.Any], suffix: bytes) -> None:
        """Buffer one RECORD line: `prefix`, the record encoded in place, `suffix`."""
        buffer = self._buffer
        mark = len(buffer)
        buffer += prefix
        try:
            ENCODER.encode_into(record, buffer, -1)
        except BaseException:
            del buffer[mark:]
            raise
        buffer += suffix
        self.messages_written += 1
        if len(buffer) >= BLOCK_BYTES:
            self.flush()

    def _append(self, line: bytes) -> None:
        self._buffer += line
        self.messages_written += 1

    # --- writing --------------------------------------------------------------------

    def flush(self) -> None:
        """Write the whole buffer to stdout; raise `OutputClosed` on a broken pipe."""
        if self._closed:
            return
        if self._buffer:
            write, self._fd = _stdout_writer()
            self._writing = True
            try:
                delivered = self._write_buffer(write)
            finally:
                self._writing = False
            if not delivered:
                self._close_broken()
                msg = (
                    "stdout was closed by its reader (broken pipe): the target stopped "
                    "reading; rerun to resume from the last STATE it stored"
                )
                raise OutputClosed(msg)
        if self._holding:
            return
        stop, self._pending_stop = self._pending_stop, None
        if stop is not None:
            raise stop

    @contextlib.contextmanager
    def holding_stop(self) -> t.Iterator[None]:
        """A stop (SIGTERM, SIGINT) arriving inside is raised only once it is done.

        For steps that must happen whole or not at all: closing a batch's files and
        announcing them, so no closed file is left unannounced by a stop.
        """
        self._holding += 1
        try:
            yield
        except BaseException:
            self._holding -= 1
            raise  # a failure (or a generator closed) inside: that is what is told
        self._holding -= 1
        if not self._holding:
            stop, self._pending_stop = self._pending_stop, None
            if stop is not None:
                raise stop

    def _write_buffer(self, write: t.Callable[[memoryview], int]) -> bool:
        """Write the buffer from `_written` on; False if the pipe is broken.

        Runs with `_writing` set, so a signal only marks a stop until this returns: the
        buffer and `_written` always agree with what reached the pipe.
        """
        with memoryview(self._buffer) as view:
            while self._written < len(view):
                chunk = view[self._written :]
                try:
                    self._written += write(chunk)
                except BrokenPipeError:
                    return False
                finally:
                    chunk.release()
        self._buffer.clear()
        self._written = 0
        return True

    def cut_partial_line(self) -> None:
        """Drop a line an interruption left half-built at the end of the buffer."""
        end = self._buffer.rfind(b"\n") + 1
        del self._buffer[max(end, self._written) :]

    def stop(self, stopped: TapStopped) -> None:
        """Called by the signal handler: raise now, or once the write in progress is done."""
        if self._writing or self._holding:
            if self._pending_stop is None:
                self._pending_stop = stopped
            return
        raise stopped

    def _close_broken(self) -> None:
        self._closed = True
        self._buffer.clear()
        self._written = 0
        if self._fd is not None:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self._fd)
            finally:
                os.close(devnull)


def _stdout_writer() -> tuple[t.Callable[[memoryview], int], int | None]:
    """How to write to stdout: the file descriptor itself, or a replaced `sys.stdout`.

    The process's real stdout is written with `os.write`, which reports exactly how much
    reached the pipe (so a write interrupted by a signal is resumed, never repeated).
    A replaced `sys.stdout` (in-process tests) is written through its binary buffer.
    """
    stdout = sys.stdout
    if stdout is sys.__stdout__ and stdout is not None:
        stdout.flush()
        fd = stdout.fileno()
        return (lambda data: os.write(fd, data)), fd
    binary = stdout.buffer

    def write(data: memoryview) -> int:
        count = binary.write(data)
        binary.flush()
        return len(data) if count is None else count

    return write, None
