"""Errors that end a run with one clear line instead of a traceback."""

from __future__ import annotations


class TargetBrazeError(Exception):
    """A problem the user can fix: the message names the setting, record or status at fault.

    `__main__.main` prints it as one line and exits non-zero. Messages never contain the
    API key: every place that raises this builds its text from settings names, record
    identifiers and Braze's own answer, never from request headers.
    """


class ConfigError(TargetBrazeError):
    """A setting is missing, malformed or inconsistent."""


class BrazeFatalError(TargetBrazeError):
    """Braze refused a request in a way no retry can fix (401, 403, 404, exhausted retries)."""


class RejectedRatioExceeded(TargetBrazeError):
    """More records were rejected than `max_rejected_ratio` allows."""


class InputError(TargetBrazeError):
    """The tap's output is not what the Singer spec (or this target) can take."""
