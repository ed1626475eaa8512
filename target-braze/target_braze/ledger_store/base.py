"""The delivery ledger's storage, common part: errors, masking, identities, keys, schema.

What the store is and promises is said once, in the package's docstring
(`target_braze.ledger_store`); this module holds what both backends share.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from abc import ABC, abstractmethod
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import xxhash

from target_braze.errors import TargetBrazeError

SCHEMA_VERSION = 6

# The states of an event or purchase identity (schema 4). `in_flight`: written, committed,
# before the request carrying it is sent; `unknown`: Braze may hold it and no answer said
# so (or a run stopped while it was in flight); `confirmed`: Braze confirmed it.
IN_FLIGHT = "in_flight"
UNKNOWN = "unknown"
CONFIRMED = "confirmed"

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
_first = itemgetter(0)
_second = itemgetter(1)


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

    def users(self, identities: Sequence[tuple[str, str]]) -> list[tuple[int, int]]:
        """`user` of each identity, in order; in C-level passes when they share one type.

        A selection's users nearly always do (a stream has one identifier): no Python call
        per user then.
        """
        if not identities:
            return []
        kinds = set(map(_first, identities))
        if len(kinds) != 1:
            user = self.user
            return [user(kind, identifier) for kind, identifier in identities]
        (kind,) = kinds
        prefix = self._type_prefixes.get(kind)
        if prefix is None:
            prefix = self._user_prefix + kind.encode() + b"\x00"
            self._type_prefixes[kind] = prefix
        encoded = map(
            str.encode, map(_second, identities), repeat("utf-8"), repeat("surrogatepass")
        )
        return list(map(_split_128, map(xxhash.xxh3_128_digest, map(prefix.__add__, encoded))))

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
    #: The identity its keys are derived from: the first API key's, kept when the workspace
    #: moves to a rotated key (`LedgerStore.move_workspace`).
    keyspace: str = ""


@dataclass(frozen=True)
class UnsettledEvent:
    """An event or purchase of unknown delivery (or in flight), for `target-braze-ledger`.

    `detail` is the JSON the run stored when it sent it: stream, user and Braze object.
    """

    key: int
    state: str
    sent_at: str | None
    detail: str | None


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
    #: Run on every user row's `entries` after the SQL (None: rows stay as they are).
    rewrite_entries: Callable[[bytes], bytes] | None = None


def _from_schema_5(blob: bytes) -> bytes:
    """A schema-5 row in schema 6's form.

    Schema 5 stored slots, days, a 64-bit digest per value, and maybe the whole object's
    digest (kept: both schemas digest the object alike). Each value's digest becomes
    `{"$xxh3": digest}`: schema 5 digested every value by the rule schema 6 uses for long
    ones (`target_braze.ledger.stored_value`), so an unchanged value still compares equal.
    A blob that is no schema-5 row is returned as it is (schema 6 reads it as no entries:
    its attributes are sent).
    """
    count, rest = divmod(len(blob), 14)
    if rest not in (0, 8) or not count or count > 0xFFFF:
        return blob
    digests = array("Q", blob[6 * count : 14 * count])
    marks = ",".join(f'{{"$xxh3":{digest}}}' for digest in digests)
    # The whole object's digest: the same rule in both schemas (zeros: none).
    whole = blob[14 * count :] or bytes(8)
    return struct.pack("<H", count) + blob[: 6 * count] + whole + f"[{marks}]".encode()


# Ordered; append a step (and raise SCHEMA_VERSION) when the schema changes.
MIGRATIONS: tuple[Migration, ...] = (
    # 2: intents, the users of requests on their way to Braze (written before sending), so
    # a crash between Braze's answer and the ledger's write can never leave a stale value.
    Migration(
        2,
        sqlite=(
            "CREATE TABLE {p}intents (id INTEGER PRIMARY KEY, ws INTEGER NOT NULL,"
            " user_keys BLOB NOT NULL)",
        ),
        postgres=(
            "CREATE TABLE {p}intents (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
            " ws integer NOT NULL, user_keys bytea NOT NULL)",
        ),
    ),
    # 3: a user's `entries` may end in the digest of the whole object they were written
    # from (see `target_braze.ledger`). No table changes, but a release that knows only
    # version 2 would misread such rows: the version tells it to refuse the ledger.
    Migration(3, sqlite=(), postgres=()),
    # 4: an event identity has a state (in_flight, unknown, confirmed; every existing row
    # was confirmed), with what was sent and when while it is not confirmed, so a lost
    # answer or a crash never resends an event Braze may hold. The partial index keeps the
    # few unconfirmed rows findable without scanning every confirmed one.
    Migration(
        4,
        sqlite=(
            "ALTER TABLE {p}events ADD COLUMN state TEXT NOT NULL DEFAULT 'confirmed'",
            "ALTER TABLE {p}events ADD COLUMN detail TEXT",
            "ALTER TABLE {p}events ADD COLUMN sent_at TEXT",
            "CREATE INDEX {p}events_unconfirmed ON {p}events (ws) WHERE state <> 'confirmed'",
        ),
        postgres=(
            "ALTER TABLE {p}events ADD COLUMN state text NOT NULL DEFAULT 'confirmed'",
            "ALTER TABLE {p}events ADD COLUMN detail text",
            "ALTER TABLE {p}events ADD COLUMN sent_at text",
            "CREATE INDEX {p}events_unconfirmed ON {p}events (ws) WHERE state <> 'confirmed'",
        ),
    ),
    # 5: a workspace moved to a rotated API key keeps the identity its keys were derived
    # from (`keyspace`; NULL: its own identity), so every entry stays valid under the new
    # key.
    Migration(
        5,
        sqlite=("ALTER TABLE {p}workspaces ADD COLUMN keyspace TEXT",),
        postgres=("ALTER TABLE {p}workspaces ADD COLUMN keyspace text",),
    ),
    # 6: a user's row holds the values Braze confirmed (a digest only for long ones) instead
    # of a digest per value (see `target_braze.ledger`): each schema-5 digest is kept, as
    # a digest entry, so nothing is sent again for the migration.
    Migration(6, sqlite=(), postgres=(), rewrite_entries=_from_schema_5),
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _last_per_key(rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows sorted by key, the last one winning where a key repeats (as upserts in order)."""
    return sorted(dict(zip(map(_first, rows), rows, strict=True)).values(), key=_first)


#: The ledger's tables, in the order an export writes them (workspaces first: the rest
#: refer to them).
TABLES = ("workspaces", "users", "events", "intents")


class LedgerStore(ABC):
    """The ledger's tables in one backend. Each object is used by one thread at a time."""

    url_display: str
    _prefix: str = ""
    #: Whether opening it created the ledger (a new file or database): nothing is known yet.
    created: bool = False

    @abstractmethod
    def register_workspace(self, identity: str, endpoint: str, label: str | None) -> int:
        """The id of the workspace `identity`, created if new; records that it was used now."""

    @abstractmethod
    def find_workspace(self, identity: str) -> int | None:
        """The id of the workspace `identity`, or None; creates nothing."""

    @abstractmethod
    def workspace_keyspace(self, workspace: int) -> str:
        """The identity the workspace's keys are derived from (see `KeySpace`)."""

    @abstractmethod
    def key_workspaces_at(self, endpoint: str) -> list[int]:
        """Workspaces named by an API key (not by `ledger_workspace`) on `endpoint`."""

    @abstractmethod
    def move_workspace(self, workspace: int, identity: str) -> None:
        """Make `identity` (a rotated key's) name `workspace`; its entries stay valid.

        The identity the keys were derived from is kept as the workspace's keyspace. An
        empty workspace the new identity already names (a run that stopped at the
        rotation check creates none, but an older release did) is deleted first; one that
        holds entries is an error.
        """

    @abstractmethod
    def read_users(self, keys: Sequence[int]) -> dict[int, tuple[int, bytes]]:
        """`key -> (check, entries)` for the keys the ledger holds (missing keys are absent)."""

    @abstractmethod
    def read_events(self, keys: Sequence[int]) -> dict[int, int]:
        """`key -> check` for the event keys the ledger holds."""

    @abstractmethod
    def read_event_states(self, keys: Sequence[int]) -> dict[int, tuple[int, str]]:
        """`key -> (check, state)` for the event keys the ledger holds."""

    @abstractmethod
    def write(
        self,
        workspace: int,
        users: Sequence[tuple[int, int, bytes]],
        events: Sequence[tuple[int, int, int, int]],
        done_intents: Sequence[int] = (),
        unknown_events: Sequence[int] = (),
        forgotten_events: Sequence[int] = (),
    ) -> None:
        """Upsert users and confirmed events; settle unconfirmed events; delete intents.

        Users are `(key, check, entries)`, events `(key, check, user_key, day)` (now
        `confirmed`), and `done_intents` the ids `add_intent` gave. `unknown_events` become
        `unknown`; `forgotten_events` (rejected: not delivered) are deleted unless
        confirmed. One transaction: after a crash either all of it is in the ledger or
        none. Where a key repeats, the last row wins.
        """

    @abstractmethod
    def add_intent(
        self,
        workspace: int,
        user_keys: Sequence[int],
        events: Sequence[tuple[int, int, int, int, str]] = (),
    ) -> int:
        """Record, committed, that a request for these users and events is about to go.

        Events are `(key, check, user_key, day, detail)`, written `in_flight`. Returns the
        intent's id (0 when there are no users: the events' rows are their own intent).
        """

    @abstractmethod
    def recover_in_flight(self, workspace: int) -> int:
        """Events a stopped run left `in_flight` become `unknown`; how many.

        Their request may have reached Braze: they must not be sent again unless a person
        releases them. (A live run's in-flight events may be swept too: it confirms them
        anyway once Braze answers.)
        """

    @abstractmethod
    def unsettled_events(self, workspace: int) -> list[UnsettledEvent]:
        """The workspace's events that are `unknown` or `in_flight`, oldest first."""

    @abstractmethod
    def release_events(self, workspace: int, keys: Sequence[int] | None) -> int:
        """Forget unconfirmed events (`keys`, or all when None); how many were deleted."""

    @abstractmethod
    def recover_intents(self, workspace: int) -> int:
        """Intents a stopped run left: drop those users' rows and the intents; how many users.

        Their requests may have reached Braze without the ledger learning what Braze holds
        now, so nothing the ledger holds for them can be trusted: they are sent in full
        once. (A live run's intents may be swept too: that only costs it a resend.)
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

    def clear_user(self, workspace: int, user_key: int, *, events: bool = True) -> tuple[int, int]:
        """Delete one user's row and (with `events`) its events; `(users, events)` deleted."""
        return self.clear_users(workspace, [user_key], events=events)

    @abstractmethod
    def clear_users(
        self, workspace: int, user_keys: Sequence[int], *, events: bool = True
    ) -> tuple[int, int]:
        """`clear_user` of many users in one transaction; `(users, events)` deleted."""

    @abstractmethod
    def table_rows(self, table: str) -> Iterator[tuple[list[str], list[tuple[Any, ...]]]]:
        """Every row of one of `TABLES`, in chunks: `(column names, rows)` (for export)."""

    @abstractmethod
    def insert_rows(
        self, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
    ) -> None:
        """Insert rows into one of `TABLES`, committed (for import)."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection; idempotent."""

    def __enter__(self) -> LedgerStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _error(self, problem: str) -> LedgerError:
        return LedgerError(f"ledger_url {self.url_display} {problem}")

    def _creation_steps(
        self, from_version: int | None, dialect: str
    ) -> list[str | Callable[[bytes], bytes]]:
        """What takes the schema from `from_version` (None: nothing) to SCHEMA_VERSION.

        SQL statements, and functions to run on every user row's `entries` (in order; a new
        ledger has no rows to rewrite).
        """
        p = self._prefix
        steps: list[str | Callable[[bytes], bytes]] = (
            [step.format(p=p) for step in _V1_SCHEMA[dialect]] if from_version is None else []
        )
        start = 1 if from_version is None else from_version
        for migration in MIGRATIONS:
            if migration.to_version > start:
                steps += [step.format(p=p) for step in getattr(migration, dialect)]
                if migration.rewrite_entries is not None and from_version is not None:
                    steps.append(migration.rewrite_entries)
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
