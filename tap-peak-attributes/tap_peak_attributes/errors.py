"""The one error type users see: a single line, no traceback, no secrets."""

from __future__ import annotations


class TapPeakError(Exception):
    """A problem the user can fix (config, credentials, missing table or column).

    `__main__.main` prints it as one `tap-peak-attributes: error: ...` line and exits 1,
    so messages must be self-contained, name the setting involved and never hold a secret.
    """
