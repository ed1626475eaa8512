"""Exact incremental windows: the bookmark and the SQL that reads after it.

A bookmark is the last `(updated_at, id)` pair emitted. A plain `>=` on the timestamp
re-sends every row sharing the bookmark's timestamp (billed Braze data points); a plain `>`
loses the rest of a tie group a checkpoint split. So STATE carries the id as a tie-breaker
next to singer-sdk's `replication_key_value`, and the next run reads

    WHERE ts > :bm OR (ts = :bm AND id > :last_id)  ORDER BY ts, id
"""

from __future__ import annotations

import datetime as dt
import typing as t
from dataclasses import dataclass

import sqlalchemy as sa

from tap_peak_attributes.timestamps import parse_setting

REPLICATION_KEY = "updated_at"
#: Extra key in the stream's STATE bookmark: the id of the last record emitted.
LAST_ID_KEY = "replication_key_last_id"
#: Name of the computed column telling whether a row lies after the stored bookmark.
AFTER_BOOKMARK = "after_bookmark"


@dataclass(frozen=True)
class Bookmark:
    """Where the previous run stopped: the last emitted `(updated_at, id)`."""

    updated_at: dt.datetime
    last_id: str | None

    @classmethod
    def from_state(cls, state: t.Mapping[str, t.Any]) -> Bookmark | None:
        """Read a stream's STATE bookmark, accepting any ISO format a user may write."""
        value = state.get("replication_key_value")
        if not value or state.get("replication_key", REPLICATION_KEY) != REPLICATION_KEY:
            return None
        last_id = state.get(LAST_ID_KEY)
        return cls(
            parse_setting(str(value), "STATE replication_key_value"),
            None if last_id is None else str(last_id),
        )


@dataclass(frozen=True)
class Window:
    """Which rows one run reads."""

    bookmark: Bookmark | None
    start_date: dt.datetime | None
    lookback: dt.timedelta
    cap: dt.datetime

    def lower_bound(self) -> tuple[dt.datetime | None, bool]:
        """The earliest timestamp to read and whether the id tie-breaker applies.

        The tie-breaker only applies when reading exactly from the bookmark: with a
        look-back the run deliberately re-reads a window before it (late-landing rows).
        """
        if self.bookmark is None:
            return self.start_date, False
        start = self.bookmark.updated_at - self.lookback
        if self.start_date and self.start_date > start:
            return self.start_date, False
        return start, not self.lookback


def after_bookmark(
    ts: sa.ColumnElement[t.Any],
    id_column: sa.ColumnElement[t.Any],
    bookmark: Bookmark,
    bind_ts: t.Callable[[dt.datetime], t.Any],
    bind_id: t.Callable[[str], t.Any],
) -> sa.ColumnElement[bool]:
    """`ts > bm OR (ts = bm AND id > last_id)`; without a stored id, `ts >= bm`.

    A bookmark with no id (written by hand or by another tool) re-sends its tie group
    rather than risking losing part of it.
    """
    stamp = sa.literal(bind_ts(bookmark.updated_at))
    if bookmark.last_id is None:
        return ts >= stamp
    return sa.or_(
        ts > stamp, sa.and_(ts == stamp, id_column > sa.literal(bind_id(bookmark.last_id)))
    )


def incremental_query(
    *,
    source: sa.TableClause,
    ts: sa.ColumnElement[t.Any],
    id_column: sa.ColumnElement[t.Any],
    columns: t.Sequence[sa.ColumnElement[t.Any]],
    window: Window,
    bind_ts: t.Callable[[dt.datetime], t.Any],
    bind_id: t.Callable[[str], t.Any],
    order_after: t.Sequence[sa.ColumnElement[t.Any]] = (),
) -> sa.Select[t.Any]:
    """Select `(ts, id, after_bookmark, *columns)` for the window, ordered by (ts, id).

    `after_bookmark` is computed by the database, so "is this row past the bookmark?"
    uses the same collation as ORDER BY (Python's string order may differ).
    """
    conditions: list[sa.ColumnElement[bool]] = [
        id_column.is_not(None),
        ts.is_not(None),
        ts <= sa.literal(bind_ts(window.cap)),
    ]
    lower, tie_breaker = window.lower_bound()
    if window.bookmark is not None and tie_breaker:
        conditions.append(after_bookmark(ts, id_column, window.bookmark, bind_ts, bind_id))
        flag: sa.ColumnElement[t.Any] = sa.literal(1)
    else:
        if lower is not None:
            conditions.append(ts >= sa.literal(bind_ts(lower)))
        if window.bookmark is None:
            flag = sa.literal(1)
        else:
            flag = sa.case(
                (after_bookmark(ts, id_column, window.bookmark, bind_ts, bind_id), 1), else_=0
            )
    return (
        sa.select(ts.label("ts"), id_column.label("id"), flag.label(AFTER_BOOKMARK), *columns)
        .select_from(source)
        .where(*conditions)
        .order_by(ts, id_column, *order_after)
    )
