"""`BatchFiles`: the records of Singer BATCH messages, read through the one record path.

A BATCH message names files (`manifest`, `file://` URIs) holding one record per JSON line,
plain or gzip (`encoding`): tap-peak-attributes' own files and singer-sdk taps' `jsonl`
files alike. Each record goes through `MessagePath.deliver`, exactly as a RECORD message's
would, so stream maps, validation, the ledger and the checkpoint treat it the same. The
STATE after a BATCH is released once every record of its files is settled. A missing or
unreadable file ends the run with one line naming it; STATE stays before it.

The manifest comes from the input, so it is not trusted with the file system:
- only files under `batch_files_dir` are read: an absolute `file://` URI without `..`,
  NUL, query or fragment, whose real path (links resolved) lies in the directory's real
  path; anything else ends the run with one line naming the URI and the problem;
- a file is opened through handles on `batch_files_dir` and each directory below it,
  none of them followed if it is a link (`private_files.open_beneath`), so a component
  swapped for a link after the check cannot lead out of the directory; with `O_NONBLOCK`,
  and it must be a regular file (`fstat`): a FIFO or a device cannot stall the run or
  fill its memory;
- at most `max_batch_file_bytes` are read from a file, after decompression;
- a settled file is deleted only if it lies under `batch_files_cleanup_dir`, the
  directory whose files the target may clean (meltano.yml: tap-peak-attributes' private
  BATCH directory), reached the same way (`private_files.unlink_beneath`); any other file
  is read and left where it is, for its writer to clean.
"""

from __future__ import annotations

import gzip
import logging
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import msgspec

from target_braze.checkpoint import Checkpoint
from target_braze.errors import ConfigError, InputError
from target_braze.message_path import MessagePath
from target_braze.messages import READ_BUFFER_BYTES, BatchMessage
from target_braze.private_files import open_beneath
from target_braze.reader import skip_rest_of_line

logger = logging.getLogger("target_braze")

_decode = msgspec.json.Decoder().decode
_COMPRESSIONS = ("none", "gzip")


class BatchFiles:
    """Reads each BATCH message's files in order, record by record."""

    def __init__(
        self, path: MessagePath, checkpoint: Checkpoint, config: Mapping[str, Any]
    ) -> None:
        """Bind to the record path and the checkpoint that releases files; check the dirs."""
        self._path = path
        self._checkpoint = checkpoint
        self._config = config
        # Resolved at the first BATCH: the tap, started beside the target, creates them.
        self._directories: tuple[Path | None, Path | None] | None = None
        self._max_bytes = int(config["max_batch_file_bytes"])
        if self._max_bytes < 1:
            raise ConfigError("max_batch_file_bytes must be at least 1")
        self._left_in_place_noted = False

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
        if self._directories is None:
            cleanup = _directory(self._config, "batch_files_cleanup_dir")
            # Cleaning a directory implies reading it: one setting suffices for a private one.
            self._directories = (_directory(self._config, "batch_files_dir") or cleanup, cleanup)
        directory, cleanup = self._directories
        if directory is None:
            raise InputError(
                f"line {line}: a BATCH message arrived but batch_files_dir is not set: set it "
                "to the directory the tap writes its batch files to (and "
                "batch_files_cleanup_dir too if the target may delete them once settled)"
            )
        deliver = self._path.deliver
        for uri in message.manifest:
            file = _local_path(uri, line, directory)
            name = str(file)
            records = _records(
                file, directory, compression, line, self._max_bytes, self._path, message.stream
            )
            for file_line, record in records:
                if record is not None:
                    deliver(routes, record, (line, name, file_line))
            if cleanup is not None and file.is_relative_to(cleanup):
                self._checkpoint.add_file(file, cleanup)
            elif not self._left_in_place_noted:
                self._left_in_place_noted = True
                logger.info(
                    "BATCH files outside batch_files_cleanup_dir (%s) are read and left in "
                    "place for their writer to clean up",
                    cleanup or "unset",
                )


def _directory(config: Mapping[str, Any], setting: str) -> Path | None:
    """The real path of a directory setting; relative to the working directory."""
    value = config.get(setting)
    if not value:
        return None
    if not isinstance(value, str) or "\x00" in value:
        raise ConfigError(f"{setting} must be the path of a directory")
    directory = Path(os.path.realpath(Path(value).expanduser()))
    if not directory.is_dir():
        raise ConfigError(
            f"{setting}: {directory} is not a directory; point {setting} at the directory "
            "the tap writes its batch files to"
        )
    return directory


def _local_path(uri: str, line: int, directory: Path) -> Path:
    """The real path of a manifest URI, checked to lie in `directory`."""

    def refuse(problem: str) -> InputError:
        return InputError(
            f"line {line}: BATCH file URI {uri[:200]!r} {problem}; target-braze reads only "
            f"absolute file:// URIs of files under batch_files_dir ({directory})"
        )

    if not isinstance(uri, str):
        raise refuse("is not a string")
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise refuse(f"is not a URI ({exc})") from None
    if parts.scheme != "file":
        raise refuse(f"has scheme {parts.scheme!r}, not file")
    if parts.netloc not in ("", "localhost"):
        raise refuse(f"names host {parts.netloc!r}: only local files are read")
    if parts.query or parts.fragment:
        raise refuse("has a query or fragment")
    try:
        decoded = unquote(parts.path, errors="strict")
    except UnicodeDecodeError:
        raise refuse("is not UTF-8 once percent-decoded") from None
    if "\x00" in decoded:
        raise refuse("holds a NUL character")
    if not decoded.startswith("/"):
        raise refuse("is a relative path")
    if ".." in decoded.split("/"):
        raise refuse("holds a '..' segment")
    real = Path(os.path.realpath(decoded))
    if not real.is_relative_to(directory):
        raise refuse(f"resolves to {real}, outside batch_files_dir")
    return real


def _records(
    file: Path,
    directory: Path,
    compression: str,
    line: int,
    max_bytes: int,
    path: MessagePath,
    stream: str,
) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """The file's records by line; None where a line was rejected unread (too long or deep)."""
    try:
        handle = _open(file, directory, line)
    except OSError as exc:
        raise InputError(
            f"line {line}: the BATCH file {file} cannot be read ({exc.strerror or exc}); STATE "
            "stays before it: rerun the sync so the tap writes it again"
        ) from None
    unpacked = gzip.GzipFile(fileobj=handle, mode="rb") if compression == "gzip" else handle
    with handle, unpacked as lines:
        file_line = 0
        read = 0
        limit = path.max_record_bytes + 1
        readline = lines.readline
        try:
            while raw := readline(limit):
                file_line += 1
                if len(raw) >= limit and raw[-1:] != b"\n":
                    rest = skip_rest_of_line(readline)
                    read += len(raw) + rest
                    if read <= max_bytes:
                        origin = (line, str(file), file_line)
                        path.oversized(raw, rest, origin, stream)
                        yield file_line, None
                        continue
                read += len(raw)
                if read > max_bytes:
                    raise InputError(
                        f"line {line}: the BATCH file {file} holds more than "
                        f"max_batch_file_bytes ({max_bytes}) bytes (after decompression) by "
                        f"its line {file_line}; raise max_batch_file_bytes or make the tap "
                        "write smaller files (batch_size)"
                    )
                try:
                    record = _decode(raw)
                except RecursionError:
                    path.too_deep(raw, (line, str(file), file_line), stream)
                    yield file_line, None
                    continue
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


def _open(file: Path, directory: Path, line: int) -> IO[bytes]:
    # Opened here and closed by the caller's `with`, so an open failure is told apart.
    # O_NONBLOCK: opening a FIFO must not wait for a writer; then it is refused by fstat.
    fd = open_beneath(directory, file, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise InputError(
                f"line {line}: the BATCH file {file} is not a regular file (a "
                f"{_kind(mode)}); target-braze reads batch files only from regular files"
            )
        os.set_blocking(fd, True)
        raw = open(fd, "rb", buffering=READ_BUFFER_BYTES)  # noqa: SIM115 (closed by caller)
    except BaseException:
        os.close(fd)
        raise
    return raw


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "directory" if stat.S_ISDIR(mode) else "special file"
