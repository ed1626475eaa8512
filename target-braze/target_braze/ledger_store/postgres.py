"""The delivery ledger in PostgreSQL, for several workers or machines."""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from typing import Any

from typing_extensions import override

from target_braze.ledger_store import base
from target_braze.ledger_store.base import (
    CONFIRMED,
    IN_FLIGHT,
    UNKNOWN,
    LedgerError,
    LedgerStore,
    UnsettledEvent,
    WorkspaceInfo,
    _last_per_key,
    _now,
    _scrub,
    mask_url,
)


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

        if self._check_version(self._run(version, commit=False)) == base.SCHEMA_VERSION:
            return

        def create(cur: Any) -> None:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (self._SCHEMA_LOCK,))
            found = self._check_version(version(cur))
            self.created = found is None
            if found != base.SCHEMA_VERSION:
                for step in self._creation_steps(found, "postgres"):
                    if isinstance(step, str):
                        cur.execute(step)
                    else:
                        self._rewrite_entries(cur, step)

        self._run(create, commit=True)

    def _rewrite_entries(self, cur: Any, rewrite: Callable[[bytes], bytes]) -> None:
        """`rewrite` every user row's entries (a migration), in chunks of keys."""
        p = self._prefix
        last = None
        while True:
            cur.execute(
                f"SELECT k, entries FROM {p}users WHERE %s::bigint IS NULL OR k > %s::bigint "
                "ORDER BY k LIMIT 10000",
                (last, last),
            )
            rows = cur.fetchall()
            if not rows:
                return
            keys = [k for k, _ in rows]
            cur.execute(
                f"UPDATE {p}users AS u SET entries = t.e FROM unnest(%b::bigint[], "
                "%b::bytea[]) AS t(k, e) WHERE u.k = t.k",
                (keys, [rewrite(bytes(e)) for _, e in rows]),
            )
            last = keys[-1]

    @override
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

    @override
    def find_workspace(self, identity: str) -> int | None:
        """See `LedgerStore.find_workspace`."""

        def find(cur: Any) -> int | None:
            cur.execute(f"SELECT id FROM {self._prefix}workspaces WHERE identity = %s", (identity,))
            row = cur.fetchone()
            return None if row is None else int(row[0])

        return self._run(find, commit=False)

    @override
    def workspace_keyspace(self, workspace: int) -> str:
        """See `LedgerStore.workspace_keyspace`."""

        def find(cur: Any) -> str | None:
            cur.execute(
                f"SELECT COALESCE(keyspace, identity) FROM {self._prefix}workspaces WHERE id = %s",
                (workspace,),
            )
            row = cur.fetchone()
            return None if row is None else str(row[0])

        found = self._run(find, commit=False)
        if found is None:
            raise self._error(f"has no workspace {workspace}")
        return found

    @override
    def key_workspaces_at(self, endpoint: str) -> list[int]:
        """See `LedgerStore.key_workspaces_at`."""

        def find(cur: Any) -> list[int]:
            cur.execute(
                f"SELECT id FROM {self._prefix}workspaces WHERE endpoint = %s "
                "AND identity LIKE 'key:%%' ORDER BY id",
                (endpoint,),
            )
            return [int(row[0]) for row in cur.fetchall()]

        return self._run(find, commit=False)

    @override
    def move_workspace(self, workspace: int, identity: str) -> None:
        """See `LedgerStore.move_workspace`."""
        p = self._prefix

        def move(cur: Any) -> int | None:
            cur.execute(f"SELECT id FROM {p}workspaces WHERE identity = %s", (identity,))
            row = cur.fetchone()
            if row is not None and int(row[0]) != workspace:
                cur.execute(
                    f"SELECT EXISTS (SELECT 1 FROM {p}users WHERE ws = %s) "
                    f"OR EXISTS (SELECT 1 FROM {p}events WHERE ws = %s)",
                    (row[0], row[0]),
                )
                if cur.fetchone()[0]:
                    return int(row[0])
                cur.execute(f"DELETE FROM {p}workspaces WHERE id = %s", (row[0],))
            cur.execute(
                f"UPDATE {p}workspaces SET keyspace = COALESCE(keyspace, identity), "
                "identity = %s WHERE id = %s",
                (identity, workspace),
            )
            return None if cur.rowcount else -1

        held = self._run(move, commit=True)
        if held == -1:
            raise self._error(f"has no workspace {workspace}")
        if held is not None:
            raise self._error(
                f"already holds entries for this key (workspace {held}): clear it first "
                "(target-braze-ledger clear-workspace) or keep both"
            )

    @override
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

    @override
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

    @override
    def read_event_states(self, keys: Sequence[int]) -> dict[int, tuple[int, str]]:
        """See `LedgerStore.read_event_states`."""
        if not keys:
            return {}

        def read(cur: Any) -> dict[int, tuple[int, str]]:
            cur.execute(
                f"SELECT k, chk, state FROM {self._prefix}events WHERE k = ANY(%b::bigint[])",
                (list(keys),),
            )
            return {k: (chk, state) for k, chk, state in cur}

        return self._run(read, commit=False)

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
                    "ws = excluded.ws, user_k = excluded.user_k, day = excluded.day, "
                    f"state = '{CONFIRMED}', detail = NULL, sent_at = NULL",
                    (workspace, *map(list, event_cols)),
                )
            if unknown_events:
                cur.execute(
                    f"UPDATE {p}events SET state = '{UNKNOWN}' WHERE k = ANY(%b::bigint[]) "
                    f"AND state <> '{CONFIRMED}'",
                    (sorted(set(unknown_events)),),
                )
            if forgotten_events:
                cur.execute(
                    f"DELETE FROM {p}events WHERE k = ANY(%b::bigint[]) AND state <> '{CONFIRMED}'",
                    (sorted(set(forgotten_events)),),
                )
            if done_intents:
                cur.execute(
                    f"DELETE FROM {p}intents WHERE id = ANY(%b::bigint[])", (list(done_intents),)
                )

        self._run(write, commit=True)

    @override
    def add_intent(
        self,
        workspace: int,
        user_keys: Sequence[int],
        events: Sequence[tuple[int, int, int, int, str]] = (),
    ) -> int:
        """See `LedgerStore.add_intent`."""
        blob = array("q", user_keys).tobytes()
        p = self._prefix
        event_cols = list(zip(*_last_per_key(events), strict=True)) if events else []
        now = _now()

        def add(cur: Any) -> int:
            if event_cols:
                cur.execute(
                    f"INSERT INTO {p}events (k, chk, ws, user_k, day, state, detail, sent_at) "
                    f"SELECT k, chk, %b, uk, d, '{IN_FLIGHT}', dt, %b FROM unnest(%b::bigint[], "
                    "%b::bigint[], %b::bigint[], %b::integer[], %b::text[]) "
                    "AS t(k, chk, uk, d, dt) ON CONFLICT (k) DO UPDATE SET chk = excluded.chk, "
                    "ws = excluded.ws, user_k = excluded.user_k, day = excluded.day, "
                    "state = excluded.state, detail = excluded.detail, sent_at = excluded.sent_at",
                    (workspace, now, *map(list, event_cols)),
                )
            if not user_keys:
                return 0
            cur.execute(
                f"INSERT INTO {p}intents (ws, user_keys) VALUES (%b, %b) RETURNING id",
                (workspace, blob),
            )
            return int(cur.fetchone()[0])

        return int(self._run(add, commit=True))

    @override
    def recover_in_flight(self, workspace: int) -> int:
        """See `LedgerStore.recover_in_flight`."""

        def recover(cur: Any) -> int:
            cur.execute(
                f"UPDATE {self._prefix}events SET state = '{UNKNOWN}' WHERE ws = %b "
                f"AND state <> '{CONFIRMED}' AND state = '{IN_FLIGHT}'",
                (workspace,),
            )
            return int(cur.rowcount)

        return int(self._run(recover, commit=True))

    @override
    def unsettled_events(self, workspace: int) -> list[UnsettledEvent]:
        """See `LedgerStore.unsettled_events`."""

        def read(cur: Any) -> list[UnsettledEvent]:
            cur.execute(
                f"SELECT k, state, sent_at, detail FROM {self._prefix}events WHERE ws = %b "
                f"AND state <> '{CONFIRMED}' ORDER BY sent_at, k",
                (workspace,),
            )
            return [UnsettledEvent(*row) for row in cur.fetchall()]

        return self._run(read, commit=False)

    @override
    def release_events(self, workspace: int, keys: Sequence[int] | None) -> int:
        """See `LedgerStore.release_events`."""

        def release(cur: Any) -> int:
            if keys is None:
                cur.execute(
                    f"DELETE FROM {self._prefix}events WHERE ws = %b AND state <> '{CONFIRMED}'",
                    (workspace,),
                )
            else:
                cur.execute(
                    f"DELETE FROM {self._prefix}events WHERE ws = %b AND k = ANY(%b::bigint[]) "
                    f"AND state <> '{CONFIRMED}'",
                    (workspace, list(keys)),
                )
            return int(cur.rowcount)

        return int(self._run(release, commit=True))

    @override
    def recover_intents(self, workspace: int) -> int:
        """See `LedgerStore.recover_intents`."""
        p = self._prefix

        def recover(cur: Any) -> int:
            cur.execute(
                f"SELECT id, user_keys FROM {p}intents WHERE ws = %b FOR UPDATE", (workspace,)
            )
            rows = cur.fetchall()
            keys = sorted({key for _, blob in rows for key in _keys_of(bytes(blob))})
            if keys:
                cur.execute(f"DELETE FROM {p}users WHERE k = ANY(%b::bigint[])", (keys,))
            if rows:
                cur.execute(
                    f"DELETE FROM {p}intents WHERE id = ANY(%b::bigint[])", ([r[0] for r in rows],)
                )
            return len(keys)

        return int(self._run(recover, commit=True))

    @override
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
            cur.execute(
                f"DELETE FROM {p}events WHERE ws = %s AND day < %s AND state = '{CONFIRMED}'",
                (workspace, day),
            )
            deleted = cur.rowcount
            cur.execute(
                f"UPDATE {p}workspaces SET events_purged_day = %s WHERE id = %s", (day, workspace)
            )
            return int(deleted)

        return int(self._run(forget, commit=True))

    @override
    def workspaces(self) -> list[WorkspaceInfo]:
        """See `LedgerStore.workspaces`."""
        p = self._prefix

        def list_all(cur: Any) -> list[WorkspaceInfo]:
            cur.execute(f"SELECT ws, count(*) FROM {p}users GROUP BY ws")
            users = dict(cur.fetchall())
            cur.execute(f"SELECT ws, count(*) FROM {p}events GROUP BY ws")
            events = dict(cur.fetchall())
            cur.execute(
                f"SELECT id, identity, endpoint, label, last_used_at, "
                f"COALESCE(keyspace, identity) FROM {p}workspaces ORDER BY id"
            )
            return [
                WorkspaceInfo(
                    i, ident, ep or "", label, users.get(i, 0), events.get(i, 0), used, ks
                )
                for i, ident, ep, label, used, ks in cur.fetchall()
            ]

        return self._run(list_all, commit=False)

    @override
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

    @override
    def clear_users(
        self, workspace: int, user_keys: Sequence[int], *, events: bool = True
    ) -> tuple[int, int]:
        """See `LedgerStore.clear_users`."""
        p = self._prefix
        keys = list(user_keys)

        def clear(cur: Any) -> tuple[int, int]:
            cur.execute(
                f"DELETE FROM {p}users WHERE ws = %s AND k = ANY(%b::bigint[])", (workspace, keys)
            )
            users = cur.rowcount
            if not events:
                return int(users), 0
            cur.execute(
                f"DELETE FROM {p}events WHERE ws = %s AND user_k = ANY(%b::bigint[])",
                (workspace, keys),
            )
            return int(users), int(cur.rowcount)

        return self._run(clear, commit=True)

    @override
    def table_rows(self, table: str) -> Iterator[tuple[list[str], list[tuple[Any, ...]]]]:
        """See `LedgerStore.table_rows` (a server-side cursor: memory stays flat)."""
        if table not in base.TABLES:
            raise ValueError(table)
        try:
            with self._conn.cursor(name=f"export_{table}", binary=True) as cur:
                cur.execute(f"SELECT * FROM {self._prefix}{table} ORDER BY 1")
                columns: list[str] | None = None
                while rows := cur.fetchmany(10_000):
                    if columns is None:
                        columns = [d.name for d in cur.description]
                    yield columns, [tuple(bytes(v) if isinstance(v, memoryview) else v
                                          for v in row) for row in rows]  # fmt: skip
            self._conn.rollback()
        except self._psycopg.Error as exc:
            self._rollback_quietly()
            raise self._error(f"failed: PostgreSQL said {_scrub(str(exc), self._url)}") from None

    @override
    def insert_rows(
        self, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
    ) -> None:
        """See `LedgerStore.insert_rows`."""
        if table not in base.TABLES:
            raise ValueError(table)
        names = ", ".join(columns)
        marks = ", ".join(["%s"] * len(columns))

        def insert(cur: Any) -> None:
            cur.executemany(f"INSERT INTO {self._prefix}{table} ({names}) VALUES ({marks})", rows)
            if table in ("workspaces", "intents"):
                # Identity columns do not advance on explicit ids: move them past the import.
                cur.execute(
                    f"SELECT setval(pg_get_serial_sequence('{self._prefix}{table}', 'id'), "
                    f"(SELECT COALESCE(max(id), 0) + 1 FROM {self._prefix}{table}), false)"
                )

        self._run(insert, commit=True)

    @override
    def close(self) -> None:
        """See `LedgerStore.close`."""
        if not self._closed:
            self._closed = True
            self._conn.close()


def _keys_of(blob: bytes) -> array[int]:
    keys = array("q")
    keys.frombytes(blob)
    return keys
