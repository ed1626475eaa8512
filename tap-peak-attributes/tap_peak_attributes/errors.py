"""The errors users see: a single line, no traceback, no secrets."""

from __future__ import annotations

import signal
import typing as t


class TapPeakError(Exception):
    """A problem the user can fix (config, credentials, missing table or column).

    `__main__.main` prints it as one `tap-peak-attributes: error: ...` line and exits 1,
    so messages must be self-contained, name the setting involved and never hold a secret.
    """


class TapStopped(BaseException):
    """SIGTERM or SIGINT arrived: unwind, then write what is buffered and the last STATE.

    A BaseException, like SystemExit, so that no `except Exception` on the way (singer-sdk
    logs every Exception leaving a stream's sync as "unhandled") treats a stop as a failure.
    """

    def __init__(self, signum: int, finish: t.Callable[[], None]) -> None:
        """`finish` writes the buffer and the STATE covering what was written."""
        super().__init__(signum)
        self.signum = signum
        self.finish = finish

    @property
    def signal_name(self) -> str:
        """`SIGTERM`, `SIGINT`, ..."""
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"
