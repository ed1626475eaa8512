"""The delivery ledger in one SQLite file (the default)."""

from __future__ import annotations

import os
import sqlite3
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from typing import Any

from typing_extensions import override

from target_braze.errors import ConfigError
from target_braze.ledger_store import base
from target_braze.ledger_store.base import (
    _SQLITE_PREFIX,
    CONFIRMED,
    IN_FLIGHT,
    UNKNOWN,
    LedgerError,
    LedgerStore,
    UnsettledEvent,
    WorkspaceInfo,
    _last_per_key,
    _now,
    mask_url,
)
from target_braze.private_files import make_private_directories, open_private

_first = itemgetter(0)
_second = itemgetter(1)
_third = itemgetter(2)


def sqlite_ledger_path(url: str) -> Path | None:
    """The file a `sqlite:///` ledger_url names (None for any other scheme)."""
    if not url.startswith(_SQLITE_PREFIX):
        return None
    raw = url[len(_SQLITE_PREFIX) :]
    if not raw or raw.startswith(":memory:"):
        raise LedgerError(f"ledger_url {mask_url(url)} names no file: use sqlite:///PATH")
    return Path(raw).expanduser()


class SqliteLedgerStore(LedgerStore):
    """The ledger in one SQLite file (WAL): any number of readers, one writer at a time.

    Two objects on one file in one process (a reader and a writer thread) and two processes
    at once are both safe: each write is one `BEGIN IMMEDIATE` transaction, and a writer
    waits up to `busy_timeout` seconds for another.
    """

    def __init__(self, url: str, busy_timeout: float = 30.0) -> None:
        self.url_display = mask_url(url)
        path = sqlite_ledger_path(url)
        if path is None:
            raise self._error("is not a sqlite:/// URL")
        self.path = path
        self._busy_timeout = busy_timeout
        self._prepare_file()
        try:
            # isolation_level=None: no implicit transactions, so reads never hold a snapshot
            # open between calls and writes are exactly the BEGIN IMMEDIATE ... COMMIT below.
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self._failure(exc) from None
        self._chunk = max(1, min(2000, self._conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)))
        try:
            with self._guard() as conn:
                self._switch_to_wal(conn)
                # NORMAL in WAL: a power loss may drop the last commits, never corrupt the
                # file; a lost ledger write only means that object is sent again.
                conn.execute("PRAGMA synchronous=NORMAL")
                # Random keys touch about one page per row: checkpointing every 10,000 pages
                # instead of 1,000 copies a page rewritten by several writes once (measured
                # 10-20% less CPU per row written at 300k-1M users); the limit gives the
                # disk back after a large checkpoint.
                conn.execute("PRAGMA wal_autocheckpoint=10000")
                conn.execute(f"PRAGMA journal_size_limit={64 * 1024 * 1024}")
            self._ensure_schema()
        except LedgerError:
            self.close()
            raise

    def _switch_to_wal(self, conn: sqlite3.Connection) -> None:
        """`PRAGMA journal_mode=WAL`, waiting for other openers of a new file.

        Switching a new file to WAL needs it to itself, and SQLite answers "locked" at once
        (without its busy timeout) while another process or thread does the same: retry
        until `busy_timeout`, as any other lock is waited for.
        """
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)

    def _prepare_file(self) -> None:
        """Create the directory (0700) and file (0600): the ledger is per-user state."""
        parent = self.path.parent
        try:
            make_private_directories(parent)
            if not parent.is_dir():
                raise NotADirectoryError
        except PermissionError:
            raise self._error(
                f"cannot be created: permission denied for directory {parent}; point "
                "ledger_url at a directory this user may write"
            ) from None
        except (FileExistsError, NotADirectoryError):
            raise self._error(
                f"cannot be created: {parent} is not a directory; point ledger_url at a file "
                "in a directory"
            ) from None
        if not os.access(parent, os.W_OK | os.X_OK):
            raise self._error(
                f"cannot be used: directory {parent} is not writable by this user (SQLite "
                "keeps its -wal file beside the ledger); fix its permissions or point "
                "ledger_url elsewhere"
            )
        try:
            os.close(open_private(self.path, "ledger_url", os.O_RDWR))
        except ConfigError as exc:
            raise self._error(str(exc).removeprefix("ledger_url: ")) from None
        except IsADirectoryError:
            raise self._error("is a directory: point ledger_url at a file") from None
        except PermissionError:
            raise self._error(
                f"cannot be opened: permission denied for {self.path} (the ledger is "
                "per-user state); run as the user who owns it, fix its permissions, or point "
                "ledger_url elsewhere"
            ) from None
        except OSError as exc:
            raise self._error(f"cannot be opened: {exc.strerror}") from None

    def _failure(self, exc: sqlite3.Error) -> LedgerError:
        """One user-facing line for a SQLite error (SQLite's messages hold no secrets)."""
        name = getattr(exc, "sqlite_errorname", "") or ""
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in str(exc):
            return self._error(
                f"stayed locked by another process for more than {self._busy_timeout:g} s: "
                "wait for the other target-braze run on this ledger to finish, then rerun"
            )
        if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
            return self._error(
                "is not a SQLite database or is corrupt: restore it from a backup, or move it "
                "aside to start a new ledger (the next run then sends every attribute again, "
                "and events the old ledger held may be sent again)"
            )
        if name.startswith(("SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_READONLY", "SQLITE_AUTH")):
            return self._error(
                f"cannot be written ({exc}): check the permissions of {self.path} and its "
                "directory, or point ledger_url elsewhere"
            )
        if name.startswith("SQLITE_FULL"):
            return self._error("cannot be written: the disk is full; free space and rerun")
        return self._error(f"failed: SQLite said {exc!s}; check the file and rerun")

    @contextmanager
    def _guard(self) -> Iterator[sqlite3.Connection]:
        """The open connection; SQLite errors inside become `LedgerError`."""
        if self._conn is None:
            raise self._error("was used after close()")
        failure: LedgerError | None = None
        try:
            yield self._conn
        except sqlite3.Error as exc:
            failure = self._failure(exc)
        if failure is not None:
            raise failure  # outside the except block: no chained driver exception

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""
        with self._guard() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise

    def _stored_version(self, conn: sqlite3.Connection) -> str | None:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if "meta" not in tables:
            if tables:
                raise self._error(
                    "is a SQLite database but not a target-braze ledger: point ledger_url at "
                    "a new file"
                )
            return None
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return None if row is None else str(row[0])

    def _ensure_schema(self) -> None:
        assert self._conn is not None  # noqa: S101 (opened in __init__)
        if self._check_version(self._stored_version(self._conn)) == base.SCHEMA_VERSION:
            return
        # Re-read under the write lock: another process may have created it meanwhile.
        with self._transaction() as conn:
            version = self._check_version(self._stored_version(conn))
            self.created = version is None
            if version != base.SCHEMA_VERSION:
                for step in self._creation_steps(version, "sqlite"):
                    if isinstance(step, str):
                        conn.execute(step)
                    else:
                        _rewrite_entries(conn, step)

    @override
    def register_workspace(self, identity: str, endpoint: str, label: str | None) -> int:
        """See `LedgerStore.register_workspace`."""
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT id FROM workspaces WHERE identity = ?", (identity,)
            ).fetchone()
            now = _now()
            if row is None:
                cur = conn.execute(
                    "INSERT INTO workspaces (identity, endpoint, label, created_at, "
                    "last_used_at) VALUES (?, ?, ?, ?, ?)",
                    (identity, endpoint, label, now, now),
                )
                return int(cur.lastrowid or 0)
            conn.execute(
                "UPDATE workspaces SET last_used_at = ?, endpoint = ?, "
                "label = COALESCE(?, label) WHERE id = ?",
                (now, endpoint, label, row[0]),
            )
            return int(row[0])

    @override
    def find_workspace(self, identity: str) -> int | None:
        """See `LedgerStore.find_workspace`."""
        with self._guard() as conn:
            row = conn.execute(
                "SELECT id FROM workspaces WHERE identity = ?", (identity,)
            ).fetchone()
        return None if row is None else int(row[0])

    @override
    def workspace_keyspace(self, workspace: int) -> str:
        """See `LedgerStore.workspace_keyspace`."""
        with self._guard() as conn:
            row = conn.execute(
                "SELECT COALESCE(keyspace, identity) FROM workspaces WHERE id = ?", (workspace,)
            ).fetchone()
        if row is None:
            raise self._error(f"has no workspace {workspace}")
        return str(row[0])

    @override
    def key_workspaces_at(self, endpoint: str) -> list[int]:
        """See `LedgerStore.key_workspaces_at`."""
        with self._guard() as conn:
            rows = conn.execute(
                "SELECT id FROM workspaces WHERE endpoint = ? AND identity LIKE 'key:%' "
                "ORDER BY id",
                (endpoint,),
            ).fetchall()
        return [int(row[0]) for row in rows]

    @override
    def move_workspace(self, workspace: int, identity: str) -> None:
        """See `LedgerStore.move_workspace`."""
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT id FROM workspaces WHERE identity = ?", (identity,)
            ).fetchone()
            if row is not None and int(row[0]) != workspace:
                held = conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM users WHERE ws = ?) "
                    "OR EXISTS (SELECT 1 FROM events WHERE ws = ?)",
                    (row[0], row[0]),
                ).fetchone()[0]
                if held:
                    raise self._error(
                        f"already holds entries for this key (workspace {row[0]}): clear it "
                        "first (target-braze-ledger clear-workspace) or keep both"
                    )
                conn.execute("DELETE FROM workspaces WHERE id = ?", (row[0],))
            moved = conn.execute(
                "UPDATE workspaces SET keyspace = COALESCE(keyspace, identity), identity = ? "
                "WHERE id = ?",
                (identity, workspace),
            ).rowcount
            if not moved:
                raise self._error(f"has no workspace {workspace}")

    def _select_in(self, sql: str, keys: Sequence[int]) -> Iterator[tuple[Any, ...]]:
        """Rows of `sql` (ending in `k IN `) for `keys`, chunked under the parameter limit."""
        with self._guard() as conn:
            for start in range(0, len(keys), self._chunk):
                chunk = keys[start : start + self._chunk]
                yield from conn.execute(f"{sql}({','.join('?' * len(chunk))})", chunk)

    @override
    def read_users(self, keys: Sequence[int]) -> dict[int, tuple[int, bytes]]:
        """See `LedgerStore.read_users`."""
        rows = self._select_in("SELECT k, chk, entries FROM users WHERE k IN ", keys)
        return {k: (chk, entries) for k, chk, entries in rows}

    @override
    def read_events(self, keys: Sequence[int]) -> dict[int, int]:
        """See `LedgerStore.read_events`."""
        return dict(self._select_in("SELECT k, chk FROM events WHERE k IN ", keys))

    @override
    def read_event_states(self, keys: Sequence[int]) -> dict[int, tuple[int, str]]:
        """See `LedgerStore.read_event_states`."""
        rows = self._select_in("SELECT k, chk, state FROM events WHERE k IN ", keys)
        return {k: (chk, state) for k, chk, state in rows}

    @override
    def write(
        self,
        workspace: int,
        users: Sequence[tuple[int, int, bytes]],
        events: Sequence[tuple[int, int, int, int]],
        done_intents: Sequence[int] = (),
        unknown_events: Sequence[int] = (),
        forgotten_events: Sequence[int] = (),
    ) -> None:
        """See `LedgerStore.write`."""
        if not (users or events or done_intents or unknown_events or forgotten_events):
            return
        # Sorted keys walk the b-tree in order: fewer pages touched per commit.
        last = _last_per_key(users)
        user_rows = zip(map(_first, last), map(_second, last), repeat(workspace), map(_third, last))
        event_rows = [(k, chk, workspace, uk, d) for k, chk, uk, d in _last_per_key(events)]
        with self._transaction() as conn:
            conn.executemany(
                "INSERT INTO users (k, chk, ws, entries) VALUES (?, ?, ?, ?) ON CONFLICT (k) "
                "DO UPDATE SET chk = excluded.chk, ws = excluded.ws, entries = excluded.entries",
                user_rows,
            )
            conn.executemany(
                "INSERT INTO events (k, chk, ws, user_k, day) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (k) DO UPDATE SET chk = excluded.chk, ws = excluded.ws, "
                "user_k = excluded.user_k, day = excluded.day, state = 'confirmed', "
                "detail = NULL, sent_at = NULL",
                event_rows,
            )
            conn.executemany(
                f"UPDATE events SET state = '{UNKNOWN}' WHERE k = ? AND state <> '{CONFIRMED}'",
                [(k,) for k in sorted(set(unknown_events))],
            )
            conn.executemany(
                f"DELETE FROM events WHERE k = ? AND state <> '{CONFIRMED}'",
                [(k,) for k in sorted(set(forgotten_events))],
            )
            conn.executemany("DELETE FROM intents WHERE id = ?", [(i,) for i in done_intents])

    @override
    def add_intent(
        self,
        workspace: int,
        user_keys: Sequence[int],
        events: Sequence[tuple[int, int, int, int, str]] = (),
    ) -> int:
        """See `LedgerStore.add_intent`."""
        now = _now()
        event_rows = [
            (k, chk, workspace, uk, day, detail, now)
            for k, chk, uk, day, detail in _last_per_key(events)
        ]
        with self._transaction() as conn:
            conn.executemany(
                "INSERT INTO events (k, chk, ws, user_k, day, state, detail, sent_at) "
                f"VALUES (?, ?, ?, ?, ?, '{IN_FLIGHT}', ?, ?) ON CONFLICT (k) DO UPDATE SET "
                "chk = excluded.chk, ws = excluded.ws, user_k = excluded.user_k, "
                "day = excluded.day, state = excluded.state, detail = excluded.detail, "
                "sent_at = excluded.sent_at",
                event_rows,
            )
            if not user_keys:
                return 0
            cur = conn.execute(
                "INSERT INTO intents (ws, user_keys) VALUES (?, ?)",
                (workspace, array("q", user_keys).tobytes()),
            )
            return int(cur.lastrowid or 0)

    @override
    def recover_in_flight(self, workspace: int) -> int:
        """See `LedgerStore.recover_in_flight`."""
        with self._transaction() as conn:
            # `state <> 'confirmed'` repeated: SQLite uses the partial index only then.
            cur = conn.execute(
                f"UPDATE events SET state = '{UNKNOWN}' WHERE ws = ? AND state <> "
                f"'{CONFIRMED}' AND state = '{IN_FLIGHT}'",
                (workspace,),
            )
            return int(cur.rowcount)

    @override
    def unsettled_events(self, workspace: int) -> list[UnsettledEvent]:
        """See `LedgerStore.unsettled_events`."""
        with self._guard() as conn:
            rows = conn.execute(
                "SELECT k, state, sent_at, detail FROM events WHERE ws = ? AND state <> "
                f"'{CONFIRMED}' ORDER BY sent_at, k",
                (workspace,),
            ).fetchall()
        return [UnsettledEvent(*row) for row in rows]

    @override
    def release_events(self, workspace: int, keys: Sequence[int] | None) -> int:
        """See `LedgerStore.release_events`."""
        with self._transaction() as conn:
            if keys is None:
                cur = conn.execute(
                    f"DELETE FROM events WHERE ws = ? AND state <> '{CONFIRMED}'", (workspace,)
                )
                return int(cur.rowcount)
            deleted = 0
            for key in keys:
                deleted += conn.execute(
                    f"DELETE FROM events WHERE k = ? AND ws = ? AND state <> '{CONFIRMED}'",
                    (key, workspace),
                ).rowcount
            return deleted

    @override
    def recover_intents(self, workspace: int) -> int:
        """See `LedgerStore.recover_intents`."""
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT id, user_keys FROM intents WHERE ws = ?", (workspace,)
            ).fetchall()
            keys = sorted({key for _, blob in rows for key in _keys_of(blob)})
            conn.executemany("DELETE FROM users WHERE k = ?", [(k,) for k in keys])
            conn.executemany("DELETE FROM intents WHERE id = ?", [(row[0],) for row in rows])
        return len(keys)

    @override
    def forget_events_before(self, workspace: int, day: int) -> int:
        """See `LedgerStore.forget_events_before`."""
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT events_purged_day FROM workspaces WHERE id = ?", (workspace,)
            ).fetchone()
            if row is None or (row[0] is not None and row[0] >= day):
                return 0
            deleted = conn.execute(
                f"DELETE FROM events WHERE ws = ? AND day < ? AND state = '{CONFIRMED}'",
                (workspace, day),
            ).rowcount
            conn.execute(
                "UPDATE workspaces SET events_purged_day = ? WHERE id = ?", (day, workspace)
            )
            return int(deleted)

    @override
    def workspaces(self) -> list[WorkspaceInfo]:
        """See `LedgerStore.workspaces`."""
        with self._guard() as conn:
            users = dict(conn.execute("SELECT ws, count(*) FROM users GROUP BY ws").fetchall())
            events = dict(conn.execute("SELECT ws, count(*) FROM events GROUP BY ws").fetchall())
            rows = conn.execute(
                "SELECT id, identity, endpoint, label, last_used_at, "
                "COALESCE(keyspace, identity) FROM workspaces ORDER BY id"
            ).fetchall()
        return [
            WorkspaceInfo(i, ident, ep or "", label, users.get(i, 0), events.get(i, 0), used, ks)
            for i, ident, ep, label, used, ks in rows
        ]

    @override
    def clear_workspace(self, workspace: int) -> tuple[int, int]:
        """See `LedgerStore.clear_workspace`."""
        with self._transaction() as conn:
            users = conn.execute("DELETE FROM users WHERE ws = ?", (workspace,)).rowcount
            events = conn.execute("DELETE FROM events WHERE ws = ?", (workspace,)).rowcount
            conn.execute("DELETE FROM workspaces WHERE id = ?", (workspace,))
        return int(users), int(events)

    @override
    def clear_users(
        self, workspace: int, user_keys: Sequence[int], *, events: bool = True
    ) -> tuple[int, int]:
        """See `LedgerStore.clear_users`."""
        users = deleted = 0
        with self._transaction() as conn:
            for start in range(0, len(user_keys), self._chunk):
                chunk = list(user_keys[start : start + self._chunk])
                marks = ",".join("?" * len(chunk))
                users += conn.execute(
                    f"DELETE FROM users WHERE ws = ? AND k IN ({marks})", (workspace, *chunk)
                ).rowcount
                if events:
                    deleted += conn.execute(
                        f"DELETE FROM events WHERE ws = ? AND user_k IN ({marks})",
                        (workspace, *chunk),
                    ).rowcount
        return int(users), int(deleted)

    @override
    def table_rows(self, table: str) -> Iterator[tuple[list[str], list[tuple[Any, ...]]]]:
        """See `LedgerStore.table_rows`."""
        if table not in base.TABLES:
            raise ValueError(table)
        with self._guard() as conn:
            cursor = conn.execute(f"SELECT * FROM {table} ORDER BY 1")
            columns = [d[0] for d in cursor.description]
            while rows := cursor.fetchmany(10_000):
                yield columns, rows

    @override
    def insert_rows(
        self, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
    ) -> None:
        """See `LedgerStore.insert_rows`."""
        if table not in base.TABLES:
            raise ValueError(table)
        names = ", ".join(columns)
        marks = ", ".join("?" * len(columns))
        with self._transaction() as conn:
            conn.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)

    @override
    def close(self) -> None:
        """See `LedgerStore.close`."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _rewrite_entries(conn: sqlite3.Connection, rewrite: Callable[[bytes], bytes]) -> None:
    """`rewrite` every user row's entries (a migration), in chunks of keys."""
    last = None
    while True:
        rows = conn.execute(
            "SELECT k, entries FROM users WHERE ? IS NULL OR k > ? ORDER BY k LIMIT 10000",
            (last, last),
        ).fetchall()
        if not rows:
            return
        conn.executemany(
            "UPDATE users SET entries = ? WHERE k = ?", [(rewrite(e), k) for k, e in rows]
        )
        last = rows[-1][0]


def _keys_of(blob: bytes) -> array[int]:
    keys = array("q")
    keys.frombytes(blob)
    return keys
