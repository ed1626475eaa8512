"""`BatchFiles`: the records of Singer BATCH messages, read through the one record path.

A BATCH message names files (`manifest`, `file://` URIs) holding one record per JSON line,
plain or gzip (`encoding`): tap-peak-attributes' own files and singer-sdk taps' `jsonl`
files alike. Each record goes through `MessagePath.deliver`, exactly as a RECORD message's
would, so stream maps, validation, the ledger and the checkpoint treat it the same. The
STATE after a BATCH is released once every record of its files is settled, and each file
is deleted as soon as its own records are (it holds customer data). A missing or
unreadable file ends the run with one line naming it; STATE stays before it.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast
from urllib.parse import unquote, urlsplit

import msgspec

from target_braze.checkpoint import Checkpoint
from target_braze.errors import InputError
from target_braze.message_path import MessagePath
from target_braze.messages import READ_BUFFER_BYTES, BatchMessage

_decode = msgspec.json.Decoder().decode
_COMPRESSIONS = ("none", "gzip")


class BatchFiles:
    """Reads each BATCH message's files in order, record by record."""

    def __init__(self, path: MessagePath, checkpoint: Checkpoint) -> None:
        """Bind to the record path and the checkpoint that releases files."""
        self._path = path
        self._checkpoint = checkpoint

    def read(self, message: BatchMessage, line: int) -> None:
        """Deliver every record of the message's files; a file is released once settled."""
        routes = self._path.routes(message.stream, line)
        encoding = message.encoding
        compression = encoding.compression or "none"
        if encoding.format != "jsonl" or compression not in _COMPRESSIONS:
            raise InputError(
                f"line {line}: BATCH encoding {encoding.format}/{compression} of stream "
                f"'{message.stream}' is not supported; use jsonl, uncompressed or gzip, in the "
                "tap's batch_config"
            )
        deliver = self._path.deliver
        for uri in message.manifest:
            file = _local_path(uri, line)
            name = str(file)
            for file_line, record in _records(file, compression, line):
                deliver(routes, record, (line, name, file_line))
            self._checkpoint.add_file(file)


def _local_path(uri: str, line: int) -> Path:
    parts = urlsplit(uri)
    if parts.scheme not in ("file", "") or parts.netloc not in ("", "localhost"):
        raise InputError(
            f"line {line}: BATCH file {uri!r} is not a local file:// URI; target-braze reads "
            "batch files from the local disk only"
        )
    return Path(unquote(parts.path))


def _records(file: Path, compression: str, line: int) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        stream = _open(file, compression)
    except OSError as exc:
        raise InputError(
            f"line {line}: the BATCH file {file} cannot be read ({exc.strerror or exc}); STATE "
            "stays before it: rerun the sync so the tap writes it again"
        ) from None
    with stream:
        file_line = 0
        try:
            for raw in stream:
                file_line += 1
                try:
                    record = _decode(raw)
                except msgspec.DecodeError as exc:
                    if not raw.strip():
                        continue
                    raise InputError(
                        f"line {line}: the BATCH file {file}, line {file_line}, is not a JSON "
                        f"record ({exc})"
                    ) from None
                if not isinstance(record, dict):
                    raise InputError(
                        f"line {line}: the BATCH file {file}, line {file_line}, holds a JSON "
                        f"{type(record).__name__}, not a record object"
                    )
                yield file_line, record
        except (OSError, EOFError) as exc:  # a truncated or corrupt gzip file
            raise InputError(
                f"line {line}: the BATCH file {file} is unreadable after line {file_line} "
                f"({exc}); STATE stays before it: rerun the sync"
            ) from None


def _open(file: Path, compression: str) -> IO[bytes]:
    # Opened here and closed by the caller's `with`, so an open failure is told apart.
    if compression == "gzip":
        return cast("IO[bytes]", gzip.open(file, "rb"))
    return file.open("rb", buffering=READ_BUFFER_BYTES)
