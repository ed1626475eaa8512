"""`MessageReader`: Singer lines from the input, decoded once, handed to the `MessagePath`.

singer-sdk lets a target choose its reader (`Target.message_reader_class`, a public
extension point) and calls the reader's `process_lines` with the input. This reader
decodes each line with msgspec straight into a typed message (floats stay floats: Braze
receives JSON numbers, so singer-sdk's `Decimal` round trip would only cost time) and
dispatches it to the message path itself; the SDK's per-message callbacks, and the
per-record work behind them, are not used. Every malformed line ends the run with one
error naming its line number.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from typing import IO, Any

import msgspec
from singer_sdk.singerlib.encoding.base import GenericSingerReader
from typing_extensions import override

from target_braze.errors import InputError
from target_braze.message_path import MessagePath
from target_braze.messages import (
    MESSAGE_TYPES,
    READ_BUFFER_BYTES,
    ActivateVersionMessage,
    BatchMessage,
    RecordMessage,
    SchemaMessage,
    StateMessage,
    message_decoder,
)

_generic_decoder = msgspec.json.Decoder()


class MessageReader(GenericSingerReader[Any]):
    """Reads bytes (stdin) or text (`--input FILE`, the SDK's test runner) lines."""

    def __init__(self) -> None:
        """No message path yet: the target binds one once its settings are known."""
        super().__init__()
        self.path: MessagePath | None = None
        self.line_number = 0

    @property
    @override
    def default_input(self) -> IO[Any]:
        """Standard input, as bytes where it can be, read `READ_BUFFER_BYTES` at a time."""
        try:
            fd = sys.stdin.fileno()
        except (AttributeError, OSError, ValueError):
            return getattr(sys.stdin, "buffer", sys.stdin)
        return open(fd, "rb", buffering=READ_BUFFER_BYTES, closefd=False)

    @override
    def deserialize_json(self, line: Any) -> dict:
        """Parse one line as a plain dict (the SDK's interface; the path uses typed messages)."""
        try:
            message = _generic_decoder.decode(line)
        except msgspec.DecodeError as exc:
            raise InputError(_decode_problem(line, exc, self.line_number)) from None
        if not isinstance(message, dict):
            raise InputError(f"line {self.line_number}: a Singer message must be a JSON object")
        return message

    @override
    def process_lines(
        self,
        file_input: IO[Any] | None,
        callbacks: dict[str, Callable[[dict], None]],
    ) -> Counter[str]:
        """Decode and dispatch every line; `callbacks` (the SDK's handlers) are not used."""
        path = self.path
        if path is None:
            msg = "MessageReader.path must be bound before reading"
            raise RuntimeError(msg)
        counts: Counter[str] = Counter()
        records = 0
        decode = message_decoder.decode
        record = path.record
        others: dict[type, tuple[str, Callable[[Any, int], None]]] = {
            StateMessage: ("STATE", path.state),
            SchemaMessage: ("SCHEMA", path.schema),
            BatchMessage: ("BATCH", path.batch),
            ActivateVersionMessage: ("ACTIVATE_VERSION", path.activate_version),
        }
        line_number = self.line_number
        stream = file_input or self.default_input
        readline = stream.readline
        # A line is read at most `limit` long, so an oversized one never sits in memory whole.
        limit = path.max_record_bytes + 1
        while line := readline(limit):
            line_number += 1
            self.line_number = line_number
            if len(line) >= limit and line[-1:] not in _NEWLINES:
                path.oversized(line, skip_rest_of_line(readline), line_number)
                continue
            try:
                message = decode(line)
            except msgspec.DecodeError as exc:
                if not line.strip():
                    continue  # a blank line carries no message
                raise InputError(_decode_problem(line, exc, line_number)) from None
            except RecursionError:
                path.too_deep(line, line_number)
                continue
            if type(message) is RecordMessage:
                records += 1
                record(message, line_number)
                continue
            name, handle = others[type(message)]
            handle(message, line_number)
            counts[name] += 1
        counts["RECORD"] += records
        return counts


_NEWLINES = (b"\n", "\n")
_SKIP_CHUNK = 1 << 20


def skip_rest_of_line(readline: Callable[[int], Any]) -> int:
    """Read past the rest of an oversized line, a chunk at a time; return its length."""
    skipped = 0
    while chunk := readline(_SKIP_CHUNK):
        skipped += len(chunk)
        if chunk[-1:] in _NEWLINES:
            break
    return skipped


def _decode_problem(line: Any, exc: msgspec.DecodeError, line_number: int) -> str:
    """One line saying what is wrong with an input line, and what to do."""
    raw = line if isinstance(line, bytes) else str(line).encode("utf-8", "surrogateescape")
    problem = str(exc)
    if isinstance(exc, msgspec.ValidationError):
        if "`$.type`" in problem or "field `type`" in problem:
            return (
                f"line {line_number}: not a Singer message type ({problem}); expected one of "
                f"{', '.join(MESSAGE_TYPES)}"
            )
        return f"line {line_number}: a malformed Singer message ({problem})"
    if b"NaN" in raw or b"Infinity" in raw:
        return (
            f"line {line_number}: holds NaN or Infinity, which JSON (and Braze) cannot carry; "
            "make the tap write null (or filter the value with a stream map)"
        )
    if "UTF-8" in problem:
        return (
            f"line {line_number}: is not valid UTF-8 ({problem}); Singer messages are UTF-8 "
            "JSON: fix the tap's text encoding"
        )
    return (
        f"line {line_number}: is not valid JSON ({problem}): {raw[:80]!r}; the tap must write "
        "one JSON Singer message per line"
    )
