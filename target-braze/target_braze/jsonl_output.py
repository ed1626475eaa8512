"""`JsonlOutput`: a JSON-lines file that several threads append to without a lock."""

from __future__ import annotations

import os
from pathlib import Path

from target_braze.private_files import open_private


class JsonlOutput:
    """Appends lines with one `write()` each on an O_APPEND descriptor.

    Appends of whole lines from several threads then never interleave, and no lock is
    held around the I/O. The file is created on the first line, so a run with nothing to
    write leaves no empty file behind. It may hold customer data, so it is opened as
    `private_files.open_private` says: 0600, never through a link, never another user's.
    """

    def __init__(
        self, path: str | Path, *, truncate: bool = False, setting: str = "the output path"
    ) -> None:
        """Remember the path; `truncate` empties an existing file at the first write."""
        self.path = Path(path)
        self.setting = setting
        self._truncate = truncate
        self._fd: int | None = None

    def write_line(self, line: bytes) -> None:
        """Append `line` and a newline."""
        fd = self._fd if self._fd is not None else self.open()
        view = memoryview(line + b"\n")
        while view:  # os.write may write fewer bytes than asked
            view = view[os.write(fd, view) :]

    def open(self) -> int:
        """Create (or truncate) the file now; `write_line` does it when first needed."""
        flags = os.O_WRONLY | os.O_APPEND
        fd = open_private(self.path, self.setting, flags, truncate=self._truncate)
        if self._fd is None:
            self._fd = fd
        else:  # another thread opened it meanwhile: keep one descriptor
            os.close(fd)
        return self._fd

    def close(self) -> None:
        """Close the file (a later line reopens it, appending)."""
        fd, self._fd = self._fd, None
        self._truncate = False
        if fd is not None:
            os.close(fd)
