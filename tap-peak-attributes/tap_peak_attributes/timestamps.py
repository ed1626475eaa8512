"""One fixed UTC text format for every `updated_at` the tap emits or bookmarks.

singer-sdk compares bookmarks as strings, so `...00Z` next to `...00.500+00:00` looks
unsorted and mixing formats breaks resumption. Every timestamp leaving the tap (records and
STATE) therefore goes through `format_utc`: `2026-11-28T06:00:00.000000+00:00`, which also
sorts correctly as text.
"""

from __future__ import annotations

import datetime as dt
import functools

from tap_peak_attributes.errors import TapPeakError

UTC = dt.UTC
#: The format of every emitted `updated_at` and of `replication_key_value` in STATE.
UTC_FORMAT = "%Y-%m-%dT%H:%M:%S.%f+00:00"
#: What SQLite's `strftime('%Y-%m-%d %H:%M:%f', col)` returns: UTC, millisecond precision.
SQLITE_FORMAT = "%Y-%m-%d %H:%M:%S"


def to_utc(value: dt.datetime | dt.date | str) -> dt.datetime:
    """Return `value` as an aware UTC datetime; naive values are taken to be UTC.

    Warehouses store updated-at as naive (Redshift TIMESTAMP, Snowflake NTZ, SQLite text)
    or zoned values; Peak writes model-run times in UTC, so naive means UTC.
    """
    if isinstance(value, str):
        text = value.strip()
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError as exc:
            msg = f"not an ISO 8601 timestamp: {text!r}"
            raise ValueError(msg) from exc
        value = parsed
    if not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day, tzinfo=UTC)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def format_utc(value: dt.datetime) -> str:
    """Format an aware or naive-UTC datetime in the tap's one fixed format."""
    return to_utc(value).strftime(UTC_FORMAT)


@functools.lru_cache(maxsize=4096)
def normalise(value: dt.datetime | str) -> str:
    """Normalise a stored updated-at to the fixed format, cached.

    A model run writes one timestamp for thousands of rows, so the cache turns the
    per-row parse into a dictionary hit on large syncs.
    """
    return format_utc(to_utc(value))


def parse_setting(value: str, setting: str) -> dt.datetime:
    """Parse a user-supplied timestamp (config or STATE), naming the setting on failure."""
    try:
        return to_utc(value)
    except (ValueError, TypeError) as exc:
        msg = f"{setting} is not an ISO 8601 timestamp: {value!r}"
        raise TapPeakError(msg) from exc


def sqlite_text(value: dt.datetime) -> str:
    """Render a datetime like SQLite's normalised `strftime('%Y-%m-%d %H:%M:%f')` output.

    Bookmarks are compared with the normalised column text on SQLite, so both sides must
    share the format and the millisecond precision SQLite's date functions work with.
    """
    utc = to_utc(value)
    return utc.strftime(SQLITE_FORMAT) + f".{utc.microsecond // 1000:03d}"
