"""Where the delivery ledger lives: a SQLite file or a PostgreSQL database, same four tables.

The store knows nothing about attributes or events: it keeps rows keyed by 64-bit integers
(`KeySpace` derives them from a workspace identity and a user or event identity) with an
opaque `entries` blob, and reads and writes them in large batches. What those blobs mean,
and when a row may be written (only after Braze confirmed), is the caller's business.

Every failure a user can meet (unreadable, locked or corrupt file, unreachable server,
refused login, unknown scheme, schema newer than this release) is one `LedgerError` line
that names the masked `ledger_url` and says what to do. A password never reaches a message:
URLs are masked and driver messages are scrubbed before they are wrapped, and wrapped
driver exceptions are not chained (their text could hold what the scrub must remove).
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import xxhash

from target_braze.errors import TargetBrazeError

SCHEMA_VERSION = 1

_SQLITE_PREFIX = "sqlite:///"
_POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")
# Bumping this salt prefix would change every workspace identity: never do it.
_IDENTITY_SALT = b"target-braze ledger workspace v1\x00"
_IDENTITY_ITERATIONS = 200_000
_SECRET_QUERY = re.compile(
    r"(?i)(?P<name>\b[\w.-]*(?:pass|pwd|secret|token|key|auth|credential)[\w.-]*)"
    r"(?P<eq>\s*=\s*)(?P<value>'[^']*'|[^&;\s]*)"
)


class LedgerError(TargetBrazeError):
    """The ledger cannot be used; the message names the masked `ledger_url` and the fix."""


def default_ledger_url() -> str:
    """`sqlite:///` + `$XDG_STATE_HOME/target-braze/ledger.sqlite` (~/.local/state by default).

    Per-user state, not cache: deleting it makes the next run send every attribute again.
    """
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return f"{_SQLITE_PREFIX}{Path(state_home) / 'target-braze' / 'ledger.sqlite'}"


def mask_url(url: str) -> str:
    """`url` with its password, and any password-, token- or key-like query value, as ***.

    Errs towards masking too much: an unencoded `@` or `:` in an odd place masks more of the
    URL than needed, never less.
    """
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        userinfo, _, hostpart = rest.rpartition("@")
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        rest = f"{userinfo}@{hostpart}"
    masked = f"{scheme}{sep}{rest}" if sep else url
    masked = _SECRET_QUERY.sub(lambda m: f"{m['name']}{m['eq']}***", masked)
    # A secret may reappear elsewhere (a database named like the password): mask it there too.
    return _replace_secrets(masked, url)


def _secrets_of(url: str) -> list[str]:
    """The literal secrets in `url` (password, secret query values), in every spelling."""
    found: list[str] = []
    _, sep, rest = url.partition("://")
    if sep and "@" in rest:
        userinfo = rest.rpartition("@")[0]
        if ":" in userinfo:
            found.append(userinfo.split(":", 1)[1])
    found += [m["value"].strip("'") for m in _SECRET_QUERY.finditer(url)]
    spellings = {s for value in found if value for s in (value, unquote(value), quote(value))}
    # Longest first, so a secret is not half-replaced by a shorter spelling of itself.
    return sorted((s for s in spellings if s), key=len, reverse=True)


def _replace_secrets(text: str, url: str) -> str:
    for secret in _secrets_of(url):
        text = text.replace(secret, "***")
    return text


def _scrub(text: str, url: str) -> str:
    """`text` (a driver message) on one line, with every secret of `url` replaced by ***."""
    return " ".join(_replace_secrets(text, url).split())


def workspace_identity(rest_endpoint_url: str, api_key: str | None, name: str | None) -> str:
    """The ledger's name for one Braze workspace: `name:<name>` or `key:<32 hex>`.

    Derived from the endpoint and the API key with a slow one-way KDF, so neither the key
    nor anything a key could be checked against cheaply is stored. Pass the endpoint as
    `resolve_rest_endpoint` returns it, so `US-03` and its URL name one workspace.
    """
    if name:
        return f"name:{name}"
    if not api_key:
        raise LedgerError(
            "ledger_workspace is required for a dry run without api_key: the ledger's "
            "workspace is derived from api_key; set ledger_workspace to name it"
        )
    salt = _IDENTITY_SALT + rest_endpoint_url.strip().rstrip("/").encode()
    digest = hashlib.pbkdf2_hmac("sha256", api_key.encode(), salt, _IDENTITY_ITERATIONS, 16)
    return f"key:{digest.hex()}"


_split_128 = struct.Struct(">qq").unpack


class KeySpace:
    """Ledger keys of one workspace: `(key, check)` per user and per event identity.

    Both are the two signed 64-bit halves of xxh3-128 over `identity NUL kind NUL ...`, so
    keys of different workspaces differ and fit SQLite INTEGER and PostgreSQL bigint. The
    check tells a (rare) 64-bit key collision from the row it collided with.
    """

    __slots__ = ("_event_prefix", "_type_prefixes", "_user_prefix")

    def __init__(self, workspace_identity: str) -> None:
        identity = workspace_identity.encode()
        self._user_prefix = identity + b"\x00user\x00"
        self._event_prefix = identity + b"\x00event\x00"
        self._type_prefixes: dict[str, bytes] = {}

    def user(self, identifier_type: str, identifier: str) -> tuple[int, int]:
        """`(key, check)` of one user identity, e.g. `("external_id", "c42")`."""
        prefix = self._type_prefixes.get(identifier_type)
        if prefix is None:
            prefix = self._user_prefix + identifier_type.encode() + b"\x00"
            self._type_prefixes[identifier_type] = prefix
        # surrogatepass: a lone surrogate from JSON must not fail the record here.
        data = prefix + identifier.encode("utf-8", "surrogatepass")
        return _split_128(xxhash.xxh3_128_digest(data))

    def event(self, identity: bytes) -> tuple[int, int]:
        """`(key, check)` of one event or purchase identity (bytes the caller canonicalised)."""
        return _split_128(xxhash.xxh3_128_digest(self._event_prefix + identity))


@dataclass(frozen=True)
class WorkspaceInfo:
    """One workspace of a ledger and its size, for `target-braze-ledger stats`."""

    id: int
    identity: str
    endpoint: str
    label: str | None
    users: int
    events: int
    last_used: str | None


@dataclass(frozen=True)
class Migration:
    """One step from `to_version - 1` to `to_version`, in each backend's SQL.

    A new ledger is created as version 1 and then taken through every migration, so there
    is one way to reach the current schema. Table names are written with `{p}`, the
    backend's table prefix (`ledger_` in PostgreSQL, nothing in SQLite).
    """

    to_version: int
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


# Ordered; append a step (and raise SCHEMA_VERSION) when the schema changes.
MIGRATIONS: tuple[Migration, ...] = ()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _last_per_key(rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows sorted by key, the last one winning where a key repeats (as upserts in order)."""
    return sorted({row[0]: row for row in rows}.values(), key=itemgetter(0))


class LedgerStore(ABC):
    """The ledger's tables in one backend. Each object is used by one thread at a time."""

    url_display: str
    _prefix: str = ""

    @abstractmethod
    def register_workspace(self, identity: str, endpoint: str, label: str | None) -> int:
        """The id of the workspace `identity`, created if new; records that it was used now."""

    @abstractmethod
    def find_workspace(self, identity: str) -> int | None:
        """The id of the workspace `identity`, or None; creates nothing."""

    @abstractmethod
    def read_users(self, keys: Sequence[int]) -> dict[int, tuple[int, bytes]]:
        """`key -> (check, entries)` for the keys the ledger holds (missing keys are absent)."""

    @abstractmethod
    def read_events(self, keys: Sequence[int]) -> dict[int, int]:
        """`key -> check` for the event keys the ledger holds."""

    @abstractmethod
    def write(
        self,
        workspace: int,
        users: Sequence[tuple[int, int, bytes]],
        events: Sequence[tuple[int, int, int, int]],
    ) -> None:
        """Upsert `(key, check, entries)` users and `(key, check, user_key, day)` events.

        One transaction: after a crash either all of it is in the ledger or none. Where a key
        repeats, the last row wins.
        """

    @abstractmethod
    def forget_events_before(self, workspace: int, day: int) -> int:
        """Delete the workspace's events older than `day`; how many.

        The purge scans the whole events table, so it runs at most once per cutoff: the
        cutoff is remembered per workspace and a call with a cutoff not later than the last
        one does nothing (with a fixed retention, once a day).
        """

    @abstractmethod
    def workspaces(self) -> list[WorkspaceInfo]:
        """Every workspace with its number of users and events (scans both tables)."""

    @abstractmethod
    def clear_workspace(self, workspace: int) -> tuple[int, int]:
        """Delete a workspace, its users and its events; `(users, events)` deleted."""

    @abstractmethod
    def clear_user(self, workspace: int, user_key: int) -> tuple[int, int]:
        """Delete one user's row and its events; `(users, events)` deleted."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection; idempotent."""

    def __enter__(self) -> LedgerStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _error(self, problem: str) -> LedgerError:
        return LedgerError(f"ledger_url {self.url_display} {problem}")

    def _creation_steps(self, from_version: int | None, dialect: str) -> list[str]:
        """SQL that takes the schema from `from_version` (None: nothing) to SCHEMA_VERSION."""
        p = self._prefix
        steps = list(_V1_SCHEMA[dialect]) if from_version is None else []
        start = 1 if from_version is None else from_version
        for migration in MIGRATIONS:
            if migration.to_version > start:
                steps += getattr(migration, dialect)
        steps = [step.format(p=p) for step in steps]
        steps.append(
            f"INSERT INTO {p}meta (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}') "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        )
        return steps

    def _check_version(self, found: str | None) -> int | None:
        """The stored version as an int (None: no ledger yet); refuses one newer than ours."""
        if found is None:
            return None
        try:
            version = int(found)
        except ValueError:
            raise self._error(
                f"has an unreadable schema version {found!r}: point ledger_url at another "
                "ledger (this one was not written by target-braze)"
            ) from None
        if version > SCHEMA_VERSION:
            raise self._error(
                f"has schema version {version}, newer than this target-braze knows "
                f"({SCHEMA_VERSION}): upgrade target-braze, or point ledger_url at another "
                "ledger"
            )
        return version


_V1_SCHEMA = {
    "sqlite": (
        "CREATE TABLE {p}meta (key TEXT PRIMARY KEY, value TEXT)",
        "CREATE TABLE {p}workspaces (id INTEGER PRIMARY KEY, identity TEXT UNIQUE NOT NULL,"
        " endpoint TEXT, label TEXT, created_at TEXT, last_used_at TEXT,"
        " events_purged_day INTEGER)",
        # Rowid tables keyed by k: the fastest layout measured. No secondary index: each one
        # slows every write, and only admin commands look rows up by ws or user_k.
        "CREATE TABLE {p}users (k INTEGER PRIMARY KEY, chk INTEGER NOT NULL,"
        " ws INTEGER NOT NULL, entries BLOB NOT NULL)",
        "CREATE TABLE {p}events (k INTEGER PRIMARY KEY, chk INTEGER NOT NULL,"
        " ws INTEGER NOT NULL, user_k INTEGER NOT NULL, day INTEGER NOT NULL)",
    ),
    "postgres": (
        "CREATE TABLE {p}meta (key text PRIMARY KEY, value text)",
        "CREATE TABLE {p}workspaces (id integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
        " identity text UNIQUE NOT NULL, endpoint text, label text, created_at text,"
        " last_used_at text, events_purged_day integer)",
        "CREATE TABLE {p}users (k bigint PRIMARY KEY, chk bigint NOT NULL,"
        " ws integer NOT NULL, entries bytea NOT NULL)",
        "CREATE TABLE {p}events (k bigint PRIMARY KEY, chk bigint NOT NULL,"
        " ws integer NOT NULL, user_k bigint NOT NULL, day integer NOT NULL)",
    ),
}


def sqlite_ledger_path(url: str) -> Path | None:
    """The file a `sqlite:///` ledger_url names (None for any other scheme)."""
    if not url.startswith(_SQLITE_PREFIX):
        return None
    raw = url[len(_SQLITE_PREFIX) :]
    if not raw or raw.startswith(":memory:"):
        raise LedgerError(f"ledger_url {mask_url(url)} names no file: use sqlite:///PATH")
    return Path(raw).expanduser()


def open_store(url: str | None, *, busy_timeout: float = 30.0) -> LedgerStore:
    """The ledger at `url` (None: `default_ledger_url()`), created or migrated if needed.

    `sqlite:///relative/path`, `sqlite:////absolute/path`, `postgresql://...` (also
    `postgres://` and `postgresql+psycopg://`). `busy_timeout` (seconds) is how long a SQLite
    write waits for another process's write before failing.
    """
    url = url or default_ledger_url()
    if url.startswith(_SQLITE_PREFIX):
        return SqliteLedgerStore(url, busy_timeout=busy_timeout)
    if url.startswith(_POSTGRES_SCHEMES):
        return PostgresLedgerStore(url)
    raise LedgerError(
        f"ledger_url {mask_url(url)} has an unknown scheme: use sqlite:///PATH (a file) or "
        "postgresql://USER@HOST/DATABASE"
    )


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
                conn.execute("PRAGMA journal_mode=WAL")
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

    def _prepare_file(self) -> None:
        """Create the directory (0700) and file (0600): the ledger is per-user state."""
        parent = self.path.parent
        try:
            parent.mkdir(mode=0o700, parents=True, exist_ok=True)
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
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
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
        if self._check_version(self._stored_version(self._conn)) == SCHEMA_VERSION:
            return
        # Re-read under the write lock: another process may have created it meanwhile.
        with self._transaction() as conn:
            version = self._check_version(self._stored_version(conn))
            if version != SCHEMA_VERSION:
                for step in self._creation_steps(version, "sqlite"):
                    conn.execute(step)

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

    def find_workspace(self, identity: str) -> int | None:
        """See `LedgerStore.find_workspace`."""
        with self._guard() as conn:
            row = conn.execute(
                "SELECT id FROM workspaces WHERE identity = ?", (identity,)
            ).fetchone()
        return None if row is None else int(row[0])

    def _select_in(self, sql: str, keys: Sequence[int]) -> Iterator[tuple[Any, ...]]:
        """Rows of `sql` (ending in `k IN `) for `keys`, chunked under the parameter limit."""
        with self._guard() as conn:
            for start in range(0, len(keys), self._chunk):
                chunk = keys[start : start + self._chunk]
                yield from conn.execute(f"{sql}({','.join('?' * len(chunk))})", chunk)

    def read_users(self, keys: Sequence[int]) -> dict[int, tuple[int, bytes]]:
        """See `LedgerStore.read_users`."""
        rows = self._select_in("SELECT k, chk, entries FROM users WHERE k IN ", keys)
        return {k: (chk, entries) for k, chk, entries in rows}

    def read_events(self, keys: Sequence[int]) -> dict[int, int]:
        """See `LedgerStore.read_events`."""
        return dict(self._select_in("SELECT k, chk FROM events WHERE k IN ", keys))

    def write(
        self,
        workspace: int,
        users: Sequence[tuple[int, int, bytes]],
        events: Sequence[tuple[int, int, int, int]],
    ) -> None:
        """See `LedgerStore.write`."""
        if not users and not events:
            return
        # Sorted keys walk the b-tree in order: fewer pages touched per commit.
        user_rows = [(k, chk, workspace, e) for k, chk, e in _last_per_key(users)]
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
                "user_k = excluded.user_k, day = excluded.day",
                event_rows,
            )

    def forget_events_before(self, workspace: int, day: int) -> int:
        """See `LedgerStore.forget_events_before`."""
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT events_purged_day FROM workspaces WHERE id = ?", (workspace,)
            ).fetchone()
            if row is None or (row[0] is not None and row[0] >= day):
                return 0
            deleted = conn.execute(
                "DELETE FROM events WHERE ws = ? AND day < ?", (workspace, day)
            ).rowcount
            conn.execute(
                "UPDATE workspaces SET events_purged_day = ? WHERE id = ?", (day, workspace)
            )
            return int(deleted)

    def workspaces(self) -> list[WorkspaceInfo]:
        """See `LedgerStore.workspaces`."""
        with self._guard() as conn:
            users = dict(conn.execute("SELECT ws, count(*) FROM users GROUP BY ws").fetchall())
            events = dict(conn.execute("SELECT ws, count(*) FROM events GROUP BY ws").fetchall())
            rows = conn.execute(
                "SELECT id, identity, endpoint, label, last_used_at FROM workspaces ORDER BY id"
            ).fetchall()
        return [
            WorkspaceInfo(i, ident, ep or "", label, users.get(i, 0), events.get(i, 0), used)
            for i, ident, ep, label, used in rows
        ]

    def clear_workspace(self, workspace: int) -> tuple[int, int]:
        """See `LedgerStore.clear_workspace`."""
        with self._transaction() as conn:
            users = conn.execute("DELETE FROM users WHERE ws = ?", (workspace,)).rowcount
            events = conn.execute("DELETE FROM events WHERE ws = ?", (workspace,)).rowcount
            conn.execute("DELETE FROM workspaces WHERE id = ?", (workspace,))
        return int(users), int(events)

    def clear_user(self, workspace: int, user_key: int) -> tuple[int, int]:
        """See `LedgerStore.clear_user`."""
        with self._transaction() as conn:
            users = conn.execute(
                "DELETE FROM users WHERE k = ? AND ws = ?", (user_key, workspace)
            ).rowcount
            events = conn.execute(
                "DELETE FROM events WHERE ws = ? AND user_k = ?", (workspace, user_key)
            ).rowcount
        return int(users), int(events)

    def close(self) -> None:
        """See `LedgerStore.close`."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class PostgresLedgerStore(LedgerStore):
    """The ledger in PostgreSQL tables prefixed `ledger_`, for several workers or machines.

    Reads are `k = ANY(array)`, writes one `INSERT ... SELECT FROM unnest(...) ON CONFLICT`
    per table, all in one transaction per `write` call. psycopg is imported here, so
    target-braze works without it when the ledger is SQLite.
    """

    _prefix = "ledger_"
    # Serialises schema creation between processes (any constant; "tbl" + 1).
    _SCHEMA_LOCK = 0x74626C01

    def __init__(self, url: str, connect_timeout: int = 10) -> None:
        self.url_display = mask_url(url)
        self._url = url
        try:
            import psycopg  # noqa: PLC0415 (optional dependency)
        except ImportError:
            raise self._error(
                "needs the PostgreSQL driver: pip install target-braze[postgres]"
            ) from None
        self._psycopg = psycopg
        conninfo = "postgresql://" + url.split("://", 1)[1]
        failure: LedgerError | None = None
        try:
            self._conn: Any = psycopg.connect(
                conninfo,
                autocommit=False,
                connect_timeout=connect_timeout,
                application_name="target-braze-ledger",
            )
        except psycopg.Error as exc:
            failure = self._connect_failure(exc)
        if failure is not None:
            raise failure
        self._closed = False
        try:
            self._ensure_schema()
        except LedgerError:
            self.close()
            raise

    def _connect_failure(self, exc: Exception) -> LedgerError:
        detail = _scrub(str(exc), self._url)
        login = ("authentication", "password", "role", "does not exist", "pg_hba", "permission")
        if any(word in detail for word in login):
            return self._error(
                f"refused the login ({detail}): check the user, password and database in ledger_url"
            )
        return self._error(
            f"is unreachable ({detail}): check the host and port in ledger_url and that the "
            "PostgreSQL server is running"
        )

    def _run(self, work: Callable[[Any], Any], *, commit: bool) -> Any:
        """`work(cursor)` in one transaction, committed or (for reads) ended; errors wrapped."""
        if self._closed:
            raise self._error("was used after close()")
        failure: LedgerError | None = None
        try:
            with self._conn.cursor(binary=True) as cur:
                result = work(cur)
            if commit:
                self._conn.commit()
            else:
                # Ends the read's transaction: an idle-in-transaction session would hold
                # locks that block a migration or vacuum in another process.
                self._conn.rollback()
            return result
        except self._psycopg.Error as exc:
            failure = self._error(f"failed: PostgreSQL said {_scrub(str(exc), self._url)}")
        except BaseException:
            self._rollback_quietly()
            raise
        self._rollback_quietly()
        raise failure

    def _rollback_quietly(self) -> None:
        # The connection may be broken already; the original error is the one to report.
        with suppress(self._psycopg.Error):
            self._conn.rollback()

    def _ensure_schema(self) -> None:
        p = self._prefix

        def version(cur: Any) -> str | None:
            # A plain catalog query, not to_regclass: after waiting for the schema lock, the
            # syscache behind to_regclass may not yet show a table another session created.
            cur.execute(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relname = %s AND n.nspname = current_schema()",
                (f"{p}meta",),
            )
            if cur.fetchone()[0] == 0:
                return None
            cur.execute(f"SELECT value FROM {p}meta WHERE key = 'schema_version'")
            row = cur.fetchone()
            return None if row is None else str(row[0])

        if self._check_version(self._run(version, commit=False)) == SCHEMA_VERSION:
            return

        def create(cur: Any) -> None:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (self._SCHEMA_LOCK,))
            found = self._check_version(version(cur))
            if found != SCHEMA_VERSION:
                for step in self._creation_steps(found, "postgres"):
                    cur.execute(step)

        self._run(create, commit=True)

    def register_workspace(self, identity: str, endpoint: str, label: str | None) -> int:
        """See `LedgerStore.register_workspace`."""
        p = self._prefix

        def register(cur: Any) -> int:
            now = _now()
            # UPDATE first: an INSERT ... ON CONFLICT would burn an identity value per run.
            cur.execute(
                f"UPDATE {p}workspaces SET last_used_at = %s, endpoint = %s, "
                "label = COALESCE(%s, label) WHERE identity = %s RETURNING id",
                (now, endpoint, label, identity),
            )
            row = cur.fetchone()
            if row is None:
                cur.execute(
                    f"INSERT INTO {p}workspaces (identity, endpoint, label, created_at, "
                    "last_used_at) VALUES (%s, %s, %s, %s, %s) "
                    "ON CONFLICT (identity) DO UPDATE SET last_used_at = excluded.last_used_at "
                    "RETURNING id",
                    (identity, endpoint, label, now, now),
                )
                row = cur.fetchone()
            return int(row[0])

        return int(self._run(register, commit=True))

    def find_workspace(self, identity: str) -> int | None:
        """See `LedgerStore.find_workspace`."""

        def find(cur: Any) -> int | None:
            cur.execute(f"SELECT id FROM {self._prefix}workspaces WHERE identity = %s", (identity,))
            row = cur.fetchone()
            return None if row is None else int(row[0])

        return self._run(find, commit=False)

    def read_users(self, keys: Sequence[int]) -> dict[int, tuple[int, bytes]]:
        """See `LedgerStore.read_users`."""
        if not keys:
            return {}

        def read(cur: Any) -> dict[int, tuple[int, bytes]]:
            cur.execute(
                f"SELECT k, chk, entries FROM {self._prefix}users WHERE k = ANY(%b::bigint[])",
                (list(keys),),
            )
            return {k: (chk, entries) for k, chk, entries in cur}

        return self._run(read, commit=False)

    def read_events(self, keys: Sequence[int]) -> dict[int, int]:
        """See `LedgerStore.read_events`."""
        if not keys:
            return {}

        def read(cur: Any) -> dict[int, int]:
            cur.execute(
                f"SELECT k, chk FROM {self._prefix}events WHERE k = ANY(%b::bigint[])",
                (list(keys),),
            )
            return dict(cur)

        return self._run(read, commit=False)

    def write(
        self,
        workspace: int,
        users: Sequence[tuple[int, int, bytes]],
        events: Sequence[tuple[int, int, int, int]],
    ) -> None:
        """See `LedgerStore.write`."""
        if not users and not events:
            return
        p = self._prefix
        # ON CONFLICT cannot touch one row twice in a statement: one row per key.
        user_cols = list(zip(*_last_per_key(users), strict=True)) if users else []
        event_cols = list(zip(*_last_per_key(events), strict=True)) if events else []

        def write(cur: Any) -> None:
            if user_cols:
                cur.execute(
                    f"INSERT INTO {p}users (k, chk, ws, entries) SELECT k, chk, %b, e FROM "
                    "unnest(%b::bigint[], %b::bigint[], %b::bytea[]) AS t(k, chk, e) "
                    "ON CONFLICT (k) DO UPDATE SET chk = excluded.chk, ws = excluded.ws, "
                    "entries = excluded.entries",
                    (workspace, *map(list, user_cols)),
                )
            if event_cols:
                cur.execute(
                    f"INSERT INTO {p}events (k, chk, ws, user_k, day) SELECT k, chk, %b, uk, d "
                    "FROM unnest(%b::bigint[], %b::bigint[], %b::bigint[], %b::integer[]) "
                    "AS t(k, chk, uk, d) ON CONFLICT (k) DO UPDATE SET chk = excluded.chk, "
                    "ws = excluded.ws, user_k = excluded.user_k, day = excluded.day",
                    (workspace, *map(list, event_cols)),
                )

        self._run(write, commit=True)

    def forget_events_before(self, workspace: int, day: int) -> int:
        """See `LedgerStore.forget_events_before`."""
        p = self._prefix

        def forget(cur: Any) -> int:
            # FOR UPDATE: two runs purging at once do the scan once.
            cur.execute(
                f"SELECT events_purged_day FROM {p}workspaces WHERE id = %s FOR UPDATE",
                (workspace,),
            )
            row = cur.fetchone()
            if row is None or (row[0] is not None and row[0] >= day):
                return 0
            cur.execute(f"DELETE FROM {p}events WHERE ws = %s AND day < %s", (workspace, day))
            deleted = cur.rowcount
            cur.execute(
                f"UPDATE {p}workspaces SET events_purged_day = %s WHERE id = %s", (day, workspace)
            )
            return int(deleted)

        return int(self._run(forget, commit=True))

    def workspaces(self) -> list[WorkspaceInfo]:
        """See `LedgerStore.workspaces`."""
        p = self._prefix

        def list_all(cur: Any) -> list[WorkspaceInfo]:
            cur.execute(f"SELECT ws, count(*) FROM {p}users GROUP BY ws")
            users = dict(cur.fetchall())
            cur.execute(f"SELECT ws, count(*) FROM {p}events GROUP BY ws")
            events = dict(cur.fetchall())
            cur.execute(
                f"SELECT id, identity, endpoint, label, last_used_at FROM {p}workspaces ORDER BY id"
            )
            return [
                WorkspaceInfo(i, ident, ep or "", label, users.get(i, 0), events.get(i, 0), used)
                for i, ident, ep, label, used in cur.fetchall()
            ]

        return self._run(list_all, commit=False)

    def clear_workspace(self, workspace: int) -> tuple[int, int]:
        """See `LedgerStore.clear_workspace`."""
        p = self._prefix

        def clear(cur: Any) -> tuple[int, int]:
            cur.execute(f"DELETE FROM {p}users WHERE ws = %s", (workspace,))
            users = cur.rowcount
            cur.execute(f"DELETE FROM {p}events WHERE ws = %s", (workspace,))
            events = cur.rowcount
            cur.execute(f"DELETE FROM {p}workspaces WHERE id = %s", (workspace,))
            return int(users), int(events)

        return self._run(clear, commit=True)

    def clear_user(self, workspace: int, user_key: int) -> tuple[int, int]:
        """See `LedgerStore.clear_user`."""
        p = self._prefix

        def clear(cur: Any) -> tuple[int, int]:
            cur.execute(f"DELETE FROM {p}users WHERE k = %s AND ws = %s", (user_key, workspace))
            users = cur.rowcount
            cur.execute(
                f"DELETE FROM {p}events WHERE ws = %s AND user_k = %s", (workspace, user_key)
            )
            return int(users), int(cur.rowcount)

        return self._run(clear, commit=True)

    def close(self) -> None:
        """See `LedgerStore.close`."""
        if not self._closed:
            self._closed = True
            self._conn.close()
