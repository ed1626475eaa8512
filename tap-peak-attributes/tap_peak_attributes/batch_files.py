"""BATCH files: records written to private local files instead of RECORD lines.

Configured by singer-sdk's standard `batch_config` setting:

    {"encoding": {"format": "jsonl", "compression": "none"},   # or "gzip"
     "storage": {"root": "file:///var/lib/peak/batches", "prefix": ""},
     "batch_size": 10000}

Each file holds up to `batch_size` source records as JSON lines, one record body per
line (the record dict only, as singer-sdk's own jsonl batch files hold), encoded by
msgspec like RECORD messages; with `gzip` the whole file is one gzip stream. A file is
announced by one BATCH message, exactly singer-sdk's shape:

    {"type": "BATCH", "stream": S, "encoding": {"format": "jsonl", "compression": "none"},
     "manifest": ["file:///var/lib/peak/batches/tap-peak-attributes-<run>-<S>-000001.jsonl"]}

They hold customer data, so the directory is private to the user (0700; an existing one
that others can read is refused) and every file is created 0600, never through a symlink.
A lock file keeps two taps from sharing a directory; at start the tap removes the files
of its own naming pattern a killed run left behind (announced files belong to the
target, which deletes each once its records are settled).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import typing as t
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from singer_sdk.helpers._batch import BaseBatchFileEncoding, BatchConfig, StorageTarget

from tap_peak_attributes.errors import TapPeakError
from tap_peak_attributes.output import ENCODER

FORMAT = "jsonl"
COMPRESSIONS = ("none", "gzip")
DEFAULT_BATCH_SIZE = 10_000
#: Every file name starts like this (after the configured prefix).
NAME_STEM = "tap-peak-attributes"
#: gzip level 1: several times faster than singer-sdk's level 9, files a little larger.
GZIP_LEVEL = 1
#: Encoded bytes collected before each write to the file.
WRITE_BYTES = 1 << 20
#: Lock files this process holds, by path (see `BatchDirectory._lock`).
_HELD_LOCKS: dict[Path, int] = {}
_SAFE_PREFIX = re.compile(r"^[A-Za-z0-9_.-]*$")
_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class BatchSettings:
    """The validated `batch_config` setting."""

    root: Path
    prefix: str = ""
    compression: str = "none"
    batch_size: int = DEFAULT_BATCH_SIZE

    @classmethod
    def from_config(cls, raw: t.Mapping[str, t.Any] | None) -> BatchSettings | None:
        """Read `batch_config` (None or empty: no BATCH messages); one clear error if wrong.

        singer-sdk fills in `batch_size`'s default, so `{}` arrives as `{"batch_size": N}`:
        without `encoding` or `storage` it still means "no BATCH messages" (the way to
        switch the default BATCH mode of meltano.yml off: `TAP_PEAK_ATTRIBUTES_BATCH_CONFIG='{}'`).
        """
        if not raw or not (raw.get("encoding") or raw.get("storage")):
            return None
        encoding = raw.get("encoding") or {}
        fmt = encoding.get("format") or FORMAT
        if fmt != FORMAT:
            msg = (
                f"batch_config.encoding.format {fmt!r} is not supported by this tap; use {FORMAT!r}"
            )
            raise TapPeakError(msg)
        compression = encoding.get("compression") or "none"
        if compression not in COMPRESSIONS:
            msg = (
                f"batch_config.encoding.compression: {compression!r} is not allowed; "
                f"use one of: {', '.join(COMPRESSIONS)}"
            )
            raise TapPeakError(msg)
        storage = raw.get("storage") or {}
        if not storage.get("root"):
            msg = (
                "batch_config.storage.root is required: a file:// URL of a local "
                "directory for the batch files (e.g. file:///var/lib/peak/batches)"
            )
            raise TapPeakError(msg)
        if storage.get("params"):
            msg = "batch_config.storage.params is not supported: files are local (file://)"
            raise TapPeakError(msg)
        prefix = storage.get("prefix") or ""
        if not _SAFE_PREFIX.match(prefix):
            msg = (
                f"batch_config.storage.prefix {prefix!r} may hold only letters, digits, "
                "'_', '-' and '.' (it starts each file name)"
            )
            raise TapPeakError(msg)
        size = raw.get("batch_size")
        batch_size = DEFAULT_BATCH_SIZE if size is None else size
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            msg = f"batch_config.batch_size must be a whole number of records >= 1, not {size!r}"
            raise TapPeakError(msg)
        return cls(local_directory(str(storage["root"])), prefix, compression, batch_size)

    @property
    def encoding(self) -> BaseBatchFileEncoding:
        """The `encoding` of every BATCH message."""
        return BaseBatchFileEncoding(format=FORMAT, compression=self.compression)

    def batch_config(self) -> BatchConfig:
        """singer-sdk's own object for the same settings (what `Stream.sync` looks for)."""
        return BatchConfig(
            encoding=self.encoding,
            storage=StorageTarget(root=self.root.as_uri(), prefix=self.prefix),
            batch_size=self.batch_size,
        )


def local_directory(root: str) -> Path:
    """The absolute directory of a `file://` root; anything else is refused.

    `file:///abs/dir` is absolute; `file://rel/dir` (singer-sdk's examples) is relative to
    the working directory (the Meltano project when run by Meltano).
    """
    parts = urlsplit(root)
    if parts.scheme != "file" or parts.query or parts.fragment:
        msg = (
            f"batch_config.storage.root must be a file:// URL of a local directory "
            f"(e.g. file:///var/lib/peak/batches), not {root!r}"
        )
        raise TapPeakError(msg)
    if parts.netloc in {"", "localhost"}:
        path = Path(unquote(parts.path))
    else:
        path = Path(unquote(parts.netloc + parts.path))
    return path.expanduser().absolute()


class BatchDirectory:
    """The private directory of one tap's batch files: checked, locked, cleaned at start."""

    def __init__(self, settings: BatchSettings) -> None:
        """Create or check the directory, take its lock and remove a killed run's files."""
        self.settings = settings
        self.path = settings.root
        self.run_id = uuid.uuid4().hex
        self._sequence = 0
        self._ensure_private()
        self._lock_fd = self._lock()
        self.removed_leftovers = self._remove_leftovers()

    def _ensure_private(self) -> None:
        where = f"batch_config.storage.root {self.path}"
        if not self.path.exists():
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.mkdir(mode=0o700)
                os.chmod(self.path, 0o700)
            except OSError as exc:
                msg = f"cannot create {where}: {exc.strerror}"
                raise TapPeakError(msg) from exc
        info = os.stat(self.path)
        if not stat.S_ISDIR(info.st_mode):
            msg = f"{where} is not a directory"
            raise TapPeakError(msg)
        if info.st_uid != os.geteuid():
            msg = f"{where} belongs to another user; give the tap a directory of its own"
            raise TapPeakError(msg)
        if info.st_mode & 0o077:
            msg = (
                f"{where} is open to other users (mode {stat.S_IMODE(info.st_mode):04o}) and "
                "batch files hold customer data: chmod 700 it or name a new directory"
            )
            raise TapPeakError(msg)

    def _lock(self) -> int:
        """Hold the directory's lock for the life of the process (the kernel drops it).

        A second tap in the same process (in-process runs, tests) reuses the lock.
        """
        path = self.path / f"{self.settings.prefix}{NAME_STEM}.lock"
        if path in _HELD_LOCKS:
            return _HELD_LOCKS[path]
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            msg = (
                f"another tap-peak-attributes is writing batch files to {self.path}; "
                "give each pipeline its own batch_config.storage.root"
            )
            raise TapPeakError(msg) from None
        _HELD_LOCKS[path] = fd
        return fd

    @property
    def leftover_pattern(self) -> re.Pattern[str]:
        """Names this tap writes: `<prefix>tap-peak-attributes-<run>-<stream>-<n>.jsonl[.gz]`."""
        return re.compile(
            rf"^{re.escape(self.settings.prefix)}{NAME_STEM}-[0-9a-f]{{32}}-"
            r"[A-Za-z0-9_-]+-\d{6,}\.jsonl(\.gz)?$"
        )

    def _remove_leftovers(self) -> list[str]:
        pattern = self.leftover_pattern
        removed = []
        for entry in os.scandir(self.path):
            if pattern.match(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(entry.name)
        return sorted(removed)

    def new_file(self, stream: str) -> BatchFile:
        """A new, empty file for records of `stream` (created 0600)."""
        self._sequence += 1
        suffix = ".jsonl.gz" if self.settings.compression == "gzip" else ".jsonl"
        name = (
            f"{self.settings.prefix}{NAME_STEM}-{self.run_id}-"
            f"{_UNSAFE_IN_NAME.sub('_', stream)}-{self._sequence:06d}{suffix}"
        )
        return BatchFile(self.path / name, gzip=self.settings.compression == "gzip")


class BatchFile:
    """One batch file being written: msgspec JSON lines, optionally one gzip stream."""

    def __init__(self, path: Path, *, gzip: bool) -> None:
        """Create the file exclusively, 0600, refusing symlinks."""
        self.path = path
        self.records = 0
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self._fd: int | None = os.open(path, flags, 0o600)
        except OSError as exc:
            msg = f"cannot create batch file {path}: {exc.strerror}"
            raise TapPeakError(msg) from exc
        self._buffer = bytearray()
        self._compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31) if gzip else None

    def write(self, record: t.Mapping[str, t.Any]) -> None:
        """Append one record as a JSON line."""
        buffer = self._buffer
        ENCODER.encode_into(record, buffer, -1)
        buffer += b"\n"
        self.records += 1
        if len(buffer) >= WRITE_BYTES:
            self._write_buffer()

    def _write_buffer(self, *, final: bool = False) -> None:
        data: bytes | bytearray = self._buffer
        if self._compressor is not None:
            data = self._compressor.compress(self._buffer)
            if final:
                data += self._compressor.flush()
        self._write_all(data)
        self._buffer.clear()

    def _write_all(self, data: bytes | bytearray) -> None:
        assert self._fd is not None  # noqa: S101 - written only while open
        view = memoryview(data)
        try:
            written = 0
            while written < len(view):
                written += os.write(self._fd, view[written:])
        except OSError as exc:
            msg = f"cannot write batch file {self.path}: {exc.strerror}"
            raise TapPeakError(msg) from exc
        finally:
            view.release()

    def close(self) -> str:
        """Write the rest, close the file and return its `file://` URL for the manifest."""
        self._write_buffer(final=True)
        self._close_fd()
        return self.path.as_uri()

    def discard(self) -> None:
        """Remove a file that will never be announced (the run stopped while writing it)."""
        self._close_fd()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
