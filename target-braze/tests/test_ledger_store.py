"""The ledger's storage: real SQLite files under tmp_path and the real PostgreSQL server."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import xxhash
from braze_target_harness import libpq_url
from target_braze.errors import TargetBrazeError
from target_braze.ledger_store import (
    CONFIRMED,
    IN_FLIGHT,
    SCHEMA_VERSION,
    UNKNOWN,
    KeySpace,
    LedgerError,
    LedgerStore,
    Migration,
    PostgresLedgerStore,
    SqliteLedgerStore,
    default_ledger_url,
    mask_url,
    open_store,
    workspace_identity,
)
from target_braze.ledger_store import base as ledger_store

REPO = Path(__file__).resolve().parents[2]
ENDPOINT = "https://rest.iad-03.braze.com"
NOBODY = 65534


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state' / 'ledger.sqlite'}"


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        request.applymarker(pytest.mark.postgres)
        return str(request.getfixturevalue("postgres_url"))
    return str(request.getfixturevalue("sqlite_url"))


@pytest.fixture
def store(ledger_url: str) -> Iterator[LedgerStore]:
    with open_store(ledger_url) as opened:
        yield opened


def user_rows(keys: KeySpace, ids: range, entries: bytes = b"e") -> list[tuple[int, int, bytes]]:
    return [(*keys.user("external_id", f"c{i}"), entries + str(i).encode()) for i in ids]


def error_of(action: Callable[[], object]) -> str:
    with pytest.raises(LedgerError) as caught:
        action()
    return str(caught.value)


def one_line_naming(message: str, masked_url: str) -> None:
    assert "\n" not in message
    assert f"ledger_url {masked_url}" in message
    assert "Traceback" not in message


def as_other_user(action: Callable[[], str]) -> str:
    """`action()` without the caller's privileges: root ignores file permissions."""
    if os.geteuid() != 0:
        return action()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to nobody, report the outcome through the pipe
        try:
            os.close(read_end)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            outcome = action()
        except BaseException as exc:  # anything must reach the parent
            outcome = f"unexpected {type(exc).__name__}: {exc}"
        os.write(write_end, outcome.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        outcome = pipe.read().decode()
    os.waitpid(pid, 0)
    return outcome


def ledger_error_text(url: str) -> str:
    try:
        open_store(url).close()
    except LedgerError as exc:
        return str(exc)
    return "opened without error"


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can reach (tmp_path's parents are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="ledger-perm-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        path.chmod(0o700)
        for child in path.rglob("*"):
            child.chmod(0o700)
        subprocess.run(["rm", "-rf", str(path)], check=True)


# --- workspace identity and keys ------------------------------------------------------------


def test_named_workspace_identity_is_the_name() -> None:
    assert workspace_identity(ENDPOINT, "secret-key", "prod") == "name:prod"


def test_key_identity_is_32_hex_and_holds_nothing_of_the_key() -> None:
    identity = workspace_identity(ENDPOINT, "secret-key-123", None)
    assert identity.startswith("key:")
    digest = identity.removeprefix("key:")
    assert len(digest) == 32
    int(digest, 16)
    assert "secret" not in identity


def test_key_identity_is_stable_and_differs_per_endpoint_and_key() -> None:
    one = workspace_identity(ENDPOINT, "k1", None)
    assert workspace_identity(ENDPOINT + "/", "k1", None) == one
    assert workspace_identity(ENDPOINT, "k2", None) != one
    assert workspace_identity("https://rest.fra-01.braze.eu", "k1", None) != one


def test_dry_run_without_api_key_or_workspace_name_is_refused() -> None:
    message = error_of(lambda: workspace_identity(ENDPOINT, None, None))
    assert "ledger_workspace" in message
    assert "dry run" in message


def test_user_key_is_the_two_signed_halves_of_xxh3_128() -> None:
    key, check = KeySpace("name:a").user("external_id", "c1")
    value = xxhash.xxh3_128_intdigest(b"name:a\x00user\x00external_id\x00c1")
    unsigned = (key % 2**64) << 64 | (check % 2**64)
    assert unsigned == value
    assert -(2**63) <= key < 2**63
    assert -(2**63) <= check < 2**63


def test_users_in_bulk_are_user_of_each_identity_in_order() -> None:
    keys = KeySpace("name:a")
    one_type = [("external_id", f"c{i}") for i in range(5)] + [("external_id", "\udc80")]
    mixed = [("external_id", "x"), ("email", "x"), ("external_id", "y")]
    for identities in (one_type, mixed, []):
        assert keys.users(identities) == [keys.user(*identity) for identity in identities]


def test_event_key_hashes_the_workspace_kind_and_identity() -> None:
    key, check = KeySpace("name:a").event(b"order-7")
    value = xxhash.xxh3_128_intdigest(b"name:a\x00event\x00order-7")
    assert ((key % 2**64) << 64 | (check % 2**64)) == value


def test_keys_differ_between_workspaces() -> None:
    assert KeySpace("name:a").user("external_id", "c1") != KeySpace("name:b").user(
        "external_id", "c1"
    )
    assert KeySpace("name:a").event(b"x") != KeySpace("name:b").event(b"x")


def test_keys_differ_between_identifier_types_and_kinds() -> None:
    keys = KeySpace("name:a")
    assert keys.user("external_id", "x") != keys.user("email", "x")
    assert keys.user("external_id", "x")[0] != keys.event(b"external_id\x00x")[0]


def test_lone_surrogate_in_identifier_still_has_a_key() -> None:
    assert KeySpace("name:a").user("external_id", "bad\udcff") != KeySpace("name:a").user(
        "external_id", "bad"
    )


# --- URLs ------------------------------------------------------------------------------------


def test_masked_url_hides_the_password() -> None:
    masked = mask_url("postgresql+psycopg://braze:s3cr%40t@db.internal:5432/ledger")
    assert masked == "postgresql+psycopg://braze:***@db.internal:5432/ledger"


def test_masked_url_hides_password_and_token_like_query_values() -> None:
    masked = mask_url("postgresql://u@h/db?sslmode=require&password=p1&api_token=t2&sslkey=k3")
    assert "p1" not in masked
    assert "t2" not in masked
    assert "k3" not in masked
    assert "sslmode=require" in masked
    assert "password=***" in masked


def test_masked_url_with_an_unencoded_at_sign_in_the_password_hides_all_of_it() -> None:
    masked = mask_url("postgresql://u:p@ss:w@rd@h/db")
    assert "ss" not in masked
    assert "rd" not in masked


def test_masked_url_without_secrets_is_unchanged() -> None:
    assert mask_url("sqlite:////var/lib/ledger.sqlite") == "sqlite:////var/lib/ledger.sqlite"


def test_default_ledger_url_is_under_xdg_state_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", "/srv/state")
    assert default_ledger_url() == "sqlite:////srv/state/target-braze/ledger.sqlite"


def test_default_ledger_url_falls_back_to_local_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", "/home/pipeline")
    assert (
        default_ledger_url() == "sqlite:////home/pipeline/.local/state/target-braze/ledger.sqlite"
    )


def test_none_opens_the_default_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    with open_store(None) as opened:
        assert isinstance(opened, SqliteLedgerStore)
    assert (tmp_path / "target-braze" / "ledger.sqlite").is_file()


def test_unknown_scheme_is_refused_with_one_line() -> None:
    message = error_of(lambda: open_store("mysql://u:pw@h/db"))
    one_line_naming(message, "mysql://u:***@h/db")
    assert "pw" not in message
    assert "sqlite:///" in message


def test_ledger_error_is_a_target_braze_error() -> None:
    assert issubclass(LedgerError, TargetBrazeError)


# --- both backends: rows ---------------------------------------------------------------------


def test_keys_never_written_are_absent_from_reads(store: LedgerStore) -> None:
    assert store.read_users([1, 2, 3]) == {}
    assert store.read_events([1, 2, 3]) == {}
    assert store.read_users([]) == {}


def test_written_users_and_events_are_read_back(store: LedgerStore) -> None:
    ws = store.register_workspace("name:a", ENDPOINT, None)
    keys = KeySpace("name:a")
    (uk, uc), (ek, ec) = keys.user("external_id", "c1"), keys.event(b"ev")
    store.write(ws, [(uk, uc, b"\x00entries\xff")], [(ek, ec, uk, 20_000)])
    assert store.read_users([uk, 42]) == {uk: (uc, b"\x00entries\xff")}
    assert store.read_events([ek, 42]) == {ek: ec}


def test_write_replaces_check_and_entries_of_a_known_user(store: LedgerStore) -> None:
    ws = store.register_workspace("name:a", ENDPOINT, None)
    store.write(ws, [(7, 1, b"old")], [])
    store.write(ws, [(7, 2, b"new")], [])
    assert store.read_users([7]) == {7: (2, b"new")}


def test_last_row_wins_when_a_key_repeats_in_one_write(store: LedgerStore) -> None:
    ws = store.register_workspace("name:a", ENDPOINT, None)
    store.write(ws, [(7, 1, b"first"), (3, 1, b"x"), (7, 2, b"last")], [(9, 1, 7, 1), (9, 2, 7, 2)])
    assert store.read_users([7]) == {7: (2, b"last")}
    assert store.read_events([9]) == {9: 2}


def test_extreme_signed_64_bit_keys_are_stored(store: LedgerStore) -> None:
    ws = store.register_workspace("name:a", ENDPOINT, None)
    low, high = -(2**63), 2**63 - 1
    store.write(ws, [(low, high, b"a"), (high, low, b"b")], [(low, high, high, 0)])
    assert store.read_users([low, high]) == {low: (high, b"a"), high: (low, b"b")}
    assert store.read_events([low]) == {low: high}


def test_one_read_takes_more_keys_than_one_sqlite_chunk(store: LedgerStore) -> None:
    ws = store.register_workspace("name:a", ENDPOINT, None)
    rows = user_rows(KeySpace("name:a"), range(5000))
    store.write(ws, rows, [])
    found = store.read_users([k for k, _, _ in rows] + [1, 2])
    assert found == {k: (c, e) for k, c, e in rows}


def test_a_failed_write_leaves_none_of_its_rows(store: LedgerStore) -> None:
    ws = store.register_workspace("name:a", ENDPOINT, None)
    bad_event = (5, None, 1, 1)  # chk NOT NULL: the events statement fails after the users one
    with pytest.raises(LedgerError):
        store.write(ws, [(1, 1, b"u")], [bad_event])  # type: ignore[list-item]
    assert store.read_users([1]) == {}
    store.write(ws, [(1, 1, b"u")], [])
    assert store.read_users([1]) == {1: (1, b"u")}


def test_rows_survive_reopening(ledger_url: str) -> None:
    with open_store(ledger_url) as first:
        ws = first.register_workspace("name:a", ENDPOINT, None)
        first.write(ws, [(1, 2, b"kept")], [(3, 4, 1, 5)])
    with open_store(ledger_url) as second:
        assert second.read_users([1]) == {1: (2, b"kept")}
        assert second.read_events([3]) == {3: 4}


def test_two_workspaces_sharing_a_ledger_never_see_each_others_keys(store: LedgerStore) -> None:
    a_id = workspace_identity(ENDPOINT, "key-a", None)
    b_id = workspace_identity(ENDPOINT, "key-b", None)
    a, b = KeySpace(a_id), KeySpace(b_id)
    ws_a = store.register_workspace(a_id, ENDPOINT, None)
    ws_b = store.register_workspace(b_id, ENDPOINT, None)
    assert ws_a != ws_b
    store.write(ws_a, user_rows(a, range(100)), [(*a.event(b"e1"), 0, 1)])
    b_user_keys = [b.user("external_id", f"c{i}")[0] for i in range(100)]
    assert store.read_users(b_user_keys) == {}
    assert store.read_events([b.event(b"e1")[0]]) == {}


# --- both backends: workspaces and admin -----------------------------------------------------


def test_registering_a_known_workspace_returns_its_id(store: LedgerStore) -> None:
    first = store.register_workspace("name:a", ENDPOINT, "Prod")
    assert store.register_workspace("name:a", ENDPOINT, None) == first
    assert store.register_workspace("name:b", ENDPOINT, None) != first
    [a, _b] = store.workspaces()
    assert (a.id, a.identity, a.endpoint, a.label) == (first, "name:a", ENDPOINT, "Prod")
    assert a.last_used is not None


def test_find_workspace_creates_nothing(store: LedgerStore) -> None:
    assert store.find_workspace("name:a") is None
    assert store.workspaces() == []
    ws = store.register_workspace("name:a", ENDPOINT, None)
    assert store.find_workspace("name:a") == ws


def test_workspaces_count_their_users_and_events(store: LedgerStore) -> None:
    a = store.register_workspace("name:a", ENDPOINT, None)
    b = store.register_workspace("name:b", ENDPOINT, None)
    store.write(a, user_rows(KeySpace("name:a"), range(3)), [(1, 1, 1, 1), (2, 2, 1, 1)])
    store.write(b, user_rows(KeySpace("name:b"), range(1)), [])
    counts = {w.id: (w.users, w.events) for w in store.workspaces()}
    assert counts == {a: (3, 2), b: (1, 0)}


def test_forgetting_events_deletes_only_older_events_of_that_workspace(store: LedgerStore) -> None:
    a = store.register_workspace("name:a", ENDPOINT, None)
    b = store.register_workspace("name:b", ENDPOINT, None)
    store.write(a, [], [(1, 1, 0, 99), (2, 2, 0, 100), (3, 3, 0, 101)])
    store.write(b, [], [(4, 4, 0, 50)])
    assert store.forget_events_before(a, 101) == 2
    assert store.read_events([1, 2, 3, 4]) == {3: 3, 4: 4}


def test_forgetting_events_scans_once_per_cutoff(store: LedgerStore) -> None:
    ws = store.register_workspace("name:a", ENDPOINT, None)
    store.write(ws, [], [(1, 1, 0, 10)])
    assert store.forget_events_before(ws, 5) == 0
    store.write(ws, [], [(2, 2, 0, 3)])
    assert store.forget_events_before(ws, 5) == 0  # already purged up to 5: no scan
    assert store.read_events([2]) == {2: 2}
    assert store.forget_events_before(ws, 11) == 2  # the next day's cutoff purges again


def test_forgetting_events_of_an_unknown_workspace_does_nothing(store: LedgerStore) -> None:
    assert store.forget_events_before(99, 10) == 0


def test_clearing_a_workspace_deletes_its_rows_and_itself(store: LedgerStore) -> None:
    a = store.register_workspace("name:a", ENDPOINT, None)
    b = store.register_workspace("name:b", ENDPOINT, None)
    store.write(a, [(1, 1, b"a"), (2, 2, b"a")], [(3, 3, 1, 1)])
    store.write(b, [(4, 4, b"b")], [(5, 5, 4, 1)])
    assert store.clear_workspace(a) == (2, 1)
    assert [w.id for w in store.workspaces()] == [b]
    assert store.read_users([1, 2, 4]) == {4: (4, b"b")}
    assert store.read_events([3, 5]) == {5: 5}


def test_clearing_a_user_deletes_its_row_and_its_events_only(store: LedgerStore) -> None:
    ws = store.register_workspace("name:a", ENDPOINT, None)
    store.write(ws, [(1, 1, b"x"), (2, 2, b"y")], [(10, 1, 1, 1), (11, 1, 1, 1), (12, 1, 2, 1)])
    assert store.clear_user(ws, 1) == (1, 2)
    assert store.read_users([1, 2]) == {2: (2, b"y")}
    assert store.read_events([10, 11, 12]) == {12: 1}


def test_clearing_many_users_at_once_keeps_their_events_and_other_workspaces(
    store: LedgerStore,
) -> None:
    # Braze confirmed a request of deletes: their rows go in one transaction, more keys
    # than one SQL statement takes; their event identities stay (events=False).
    ws = store.register_workspace("name:a", ENDPOINT, None)
    other = store.register_workspace("name:b", ENDPOINT, None)
    keys = list(range(1, 2502))
    store.write(ws, [(k, k, b"x") for k in keys], [(100_000, 1, 1, 1)])
    store.write(other, [(200_000, 1, b"o")], [])
    assert store.clear_users(ws, [*keys[:-1], 200_000], events=False) == (2500, 0)
    assert store.read_users([*keys, 200_000]) == {2501: (2501, b"x"), 200_000: (1, b"o")}
    assert store.read_events([100_000]) == {100_000: 1}
    assert store.clear_users(ws, [2501, 1]) == (1, 1)


def test_store_used_after_close_is_refused(ledger_url: str) -> None:
    opened = open_store(ledger_url)
    opened.close()
    opened.close()
    assert "close" in error_of(lambda: opened.read_users([1]))


# --- both backends: schema versions ----------------------------------------------------------


def _meta(ledger_url: str) -> str:
    return "ledger_meta" if ledger_url.startswith("postgres") else "meta"


def _set_version(ledger_url: str, version: str) -> None:
    sql = f"UPDATE {_meta(ledger_url)} SET value = '{version}' WHERE key = 'schema_version'"
    if ledger_url.startswith("sqlite"):
        with sqlite3.connect(ledger_url.removeprefix("sqlite:///")) as conn:
            conn.execute(sql)
    else:
        with psycopg.connect(libpq_url(ledger_url)) as conn:
            conn.execute(sql)


def test_a_new_ledger_records_the_schema_version(ledger_url: str) -> None:
    open_store(ledger_url).close()
    sql = f"SELECT value FROM {_meta(ledger_url)} WHERE key = 'schema_version'"
    if ledger_url.startswith("sqlite"):
        with sqlite3.connect(ledger_url.removeprefix("sqlite:///")) as conn:
            assert conn.execute(sql).fetchone() == (str(SCHEMA_VERSION),)
    else:
        with psycopg.connect(libpq_url(ledger_url)) as conn:
            assert conn.execute(sql).fetchone() == (str(SCHEMA_VERSION),)


def test_newer_schema_version_is_refused_with_one_line(ledger_url: str) -> None:
    open_store(ledger_url).close()
    _set_version(ledger_url, str(SCHEMA_VERSION + 1))
    message = error_of(lambda: open_store(ledger_url))
    one_line_naming(message, mask_url(ledger_url))
    assert f"has schema version {SCHEMA_VERSION + 1}, newer than this target-braze knows" in (
        message
    )
    assert "upgrade target-braze" in message


def test_older_schema_version_is_migrated(ledger_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    current = SCHEMA_VERSION
    with open_store(ledger_url) as old:
        ws = old.register_workspace("name:a", ENDPOINT, None)
        old.write(ws, [(1, 1, b"kept")], [])
    step = "CREATE TABLE {p}migrated_marker (n integer)"
    later = Migration(current + 1, (step,), (step,))
    monkeypatch.setattr(ledger_store, "MIGRATIONS", (*ledger_store.MIGRATIONS, later))
    monkeypatch.setattr(ledger_store, "SCHEMA_VERSION", current + 1)
    with open_store(ledger_url) as new:
        assert new.read_users([1]) == {1: (1, b"kept")}
    prefix = "ledger_" if ledger_url.startswith("postgres") else ""
    if ledger_url.startswith("sqlite"):
        with sqlite3.connect(ledger_url.removeprefix("sqlite:///")) as conn:
            version = conn.execute("SELECT value FROM meta").fetchone()
            conn.execute(f"SELECT n FROM {prefix}migrated_marker")
    else:
        with psycopg.connect(libpq_url(ledger_url)) as conn:
            version = conn.execute("SELECT value FROM ledger_meta").fetchone()
            conn.execute(f"SELECT n FROM {prefix}migrated_marker")
    assert version == (str(current + 1),)


def test_a_version_1_ledger_gains_the_intents_table(ledger_url: str) -> None:
    """The real migration to 2: a ledger written by the first release keeps its rows."""
    prefix = "ledger_" if ledger_url.startswith("postgres") else ""
    dialect = "postgres" if prefix else "sqlite"
    v1 = [step.format(p=prefix) for step in ledger_store._V1_SCHEMA[dialect]]
    v1.append(f"INSERT INTO {prefix}meta (key, value) VALUES ('schema_version', '1')")
    blob = "X'78'" if dialect == "sqlite" else "'\\x78'::bytea"
    v1.append(f"INSERT INTO {prefix}users (k, chk, ws, entries) VALUES (7, 7, 1, {blob})")
    if dialect == "sqlite":
        path = Path(ledger_url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path) as conn:
            for step in v1:
                conn.execute(step)
    else:
        with psycopg.connect(libpq_url(ledger_url)) as conn:
            for step in v1:
                conn.execute(step)
    with open_store(ledger_url) as store:
        assert store.read_users([7]) == {7: (7, b"x")}
        assert store.recover_intents(1) == 0  # the intents table exists


def test_a_new_ledger_is_created_through_every_migration(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    current = SCHEMA_VERSION
    step = "CREATE TABLE {p}migrated_marker (n integer)"
    later = Migration(current + 1, (step,), (step,))
    monkeypatch.setattr(ledger_store, "MIGRATIONS", (*ledger_store.MIGRATIONS, later))
    monkeypatch.setattr(ledger_store, "SCHEMA_VERSION", current + 1)
    open_store(ledger_url).close()
    monkeypatch.undo()
    assert f"newer than this target-braze knows ({current})" in error_of(
        lambda: open_store(ledger_url)
    )


def test_intents_left_by_a_stopped_run_drop_their_users_and_nothing_else(
    store: LedgerStore,
) -> None:
    ws = store.register_workspace("name:a", ENDPOINT, None)
    store.write(ws, [(1, 1, b"a"), (2, 2, b"b"), (3, 3, b"c")], [])
    settled = store.add_intent(ws, [3])
    store.add_intent(ws, [1, 2])  # never settled: the run stopped
    store.write(ws, [(3, 3, b"c2")], [], done_intents=[settled])

    assert store.recover_intents(ws) == 2

    assert store.read_users([1, 2, 3]) == {3: (3, b"c2")}
    assert store.recover_intents(ws) == 0


def test_recovering_intents_leaves_other_workspaces_alone(store: LedgerStore) -> None:
    one = store.register_workspace("name:one", ENDPOINT, None)
    two = store.register_workspace("name:two", ENDPOINT, None)
    store.write(two, [(5, 5, b"e")], [])
    store.add_intent(two, [5])
    assert store.recover_intents(one) == 0
    assert store.read_users([5]) == {5: (5, b"e")}


def test_schema_version_is_the_last_migrations() -> None:
    assert max([1, *(m.to_version for m in ledger_store.MIGRATIONS)]) == SCHEMA_VERSION


def test_ledgers_opened_at_once_on_a_new_url_all_open(ledger_url: str) -> None:
    outcomes: list[str] = []

    def open_one() -> None:
        try:
            open_store(ledger_url).close()
            outcomes.append("ok")
        except LedgerError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == ["ok"] * 4


# --- both backends: concurrency --------------------------------------------------------------

WRITER = """
import sys
from target_braze.ledger_store import KeySpace, open_store
url, name, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
keys = KeySpace("name:shared")
with open_store(url) as store:
    ws = store.register_workspace("name:shared", "https://x", None)
    for batch in range(40):
        # Half of each batch is shared with the other process: same rows, overlapping writes.
        own = range(start + batch * 250, start + (batch + 1) * 250)
        ids = [*own, *range(batch * 250, (batch + 1) * 250)]
        users = [(*keys.user("external_id", f"c{i}"), name.encode()) for i in ids]
        events = [(*keys.event(f"{name}-{i}".encode()), users[0][0], batch) for i in ids]
        store.write(ws, users, events)
"""


def test_two_processes_writing_one_ledger_at_once_do_not_corrupt_it(ledger_url: str) -> None:
    open_store(ledger_url).close()
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, ledger_url, name, str(start)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, start in (("one", 100_000), ("two", 200_000))
    ]
    for writer in writers:
        _, stderr = writer.communicate(timeout=300)
        assert writer.returncode == 0, stderr
    keys = KeySpace("name:shared")
    all_ids = [*range(10_000), *range(100_000, 110_000), *range(200_000, 210_000)]
    with open_store(ledger_url) as store:
        found = store.read_users([keys.user("external_id", f"c{i}")[0] for i in all_ids])
        [info] = store.workspaces()
    assert len(found) == 30_000
    assert (info.users, info.events) == (30_000, 40_000)
    if ledger_url.startswith("sqlite"):
        with sqlite3.connect(ledger_url.removeprefix("sqlite:///")) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_a_reader_and_a_writer_thread_share_one_ledger(ledger_url: str) -> None:
    with open_store(ledger_url) as reader, open_store(ledger_url) as writer:
        ws = reader.register_workspace("name:a", ENDPOINT, None)
        rows = user_rows(KeySpace("name:a"), range(2000))
        failures: list[BaseException] = []

        def write_all() -> None:
            try:
                for start in range(0, 2000, 200):
                    writer.write(ws, rows[start : start + 200], [])
            except BaseException as exc:  # reported by the main thread
                failures.append(exc)

        thread = threading.Thread(target=write_all)
        thread.start()
        while thread.is_alive():
            reader.read_users([k for k, _, _ in rows[:500]])
        thread.join()
        assert failures == []
        assert len(reader.read_users([k for k, _, _ in rows])) == 2000


# --- SQLite ----------------------------------------------------------------------------------


def test_sqlite_ledger_directory_is_private_and_file_is_0600(tmp_path: Path) -> None:
    path = tmp_path / "state" / "target-braze" / "ledger.sqlite"
    open_store(f"sqlite:///{path}").close()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_sqlite_ledger_is_in_wal_mode(sqlite_url: str) -> None:
    open_store(sqlite_url).close()
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_relative_sqlite_path_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    open_store("sqlite:///ledgers/l.sqlite").close()
    assert (tmp_path / "ledgers" / "l.sqlite").is_file()


def test_garbage_file_is_refused_as_corrupt_with_one_line(sqlite_url: str) -> None:
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    path.parent.mkdir()
    path.write_bytes(b"\x13not a database\x00" * 500)
    message = error_of(lambda: open_store(sqlite_url))
    one_line_naming(message, sqlite_url)
    assert "not a SQLite database or is corrupt" in message
    assert "move it aside" in message


def test_sqlite_database_that_is_not_a_ledger_is_refused(sqlite_url: str) -> None:
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    path.parent.mkdir()
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE customers (id TEXT)")
    message = error_of(lambda: open_store(sqlite_url))
    one_line_naming(message, sqlite_url)
    assert "not a target-braze ledger" in message


def test_ledger_locked_longer_than_the_busy_timeout_fails_with_one_line(sqlite_url: str) -> None:
    with SqliteLedgerStore(sqlite_url, busy_timeout=0.2) as store:
        ws = store.register_workspace("name:a", ENDPOINT, None)
        other = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO users VALUES (99, 1, 1, x'00')")
        try:
            message = error_of(lambda: store.write(ws, [(1, 1, b"x")], []))
        finally:
            other.execute("ROLLBACK")
            other.close()
        one_line_naming(message, sqlite_url)
        assert "locked by another process for more than 0.2 s" in message
        store.write(ws, [(1, 1, b"x")], [])  # usable again once the lock is gone
        assert store.read_users([1]) == {1: (1, b"x")}


def test_reads_are_not_blocked_by_another_process_writing(sqlite_url: str) -> None:
    with SqliteLedgerStore(sqlite_url, busy_timeout=0.2) as store:
        ws = store.register_workspace("name:a", ENDPOINT, None)
        store.write(ws, [(1, 1, b"x")], [])
        other = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO users VALUES (99, 1, 1, x'00')")
        try:
            assert store.read_users([1, 99]) == {1: (1, b"x")}
        finally:
            other.execute("ROLLBACK")
            other.close()


def test_unreadable_ledger_file_is_refused_with_one_line(shared_dir: Path) -> None:
    shared_dir.chmod(0o777)
    path = shared_dir / "ledger.sqlite"
    url = f"sqlite:///{path}"
    open_store(url).close()
    path.chmod(0o000 if os.geteuid() != 0 else 0o600)  # root's 0600 file: not nobody's
    message = as_other_user(lambda: ledger_error_text(url))
    one_line_naming(message, url)
    assert f"permission denied for {path}" in message


def test_unwritable_ledger_directory_is_refused_with_one_line(shared_dir: Path) -> None:
    target = shared_dir / "locked-down"
    target.mkdir(mode=0o755)
    if os.geteuid() != 0:
        target.chmod(0o555)
    url = f"sqlite:///{target / 'ledger.sqlite'}"
    message = as_other_user(lambda: ledger_error_text(url))
    one_line_naming(message, url)
    assert f"directory {target} is not writable" in message


def test_directory_that_cannot_be_created_is_refused_with_one_line(shared_dir: Path) -> None:
    if os.geteuid() != 0:
        shared_dir.chmod(0o555)
    url = f"sqlite:///{shared_dir / 'new' / 'ledger.sqlite'}"
    message = as_other_user(lambda: ledger_error_text(url))
    one_line_naming(message, url)
    assert f"permission denied for directory {shared_dir / 'new'}" in message


def test_parent_that_is_a_file_is_refused_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    url = f"sqlite:///{tmp_path / 'file' / 'ledger.sqlite'}"
    message = error_of(lambda: open_store(url))
    one_line_naming(message, url)
    assert "is not a directory" in message


def test_ledger_path_that_is_a_directory_is_refused_with_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}"
    one_line_naming(error_of(lambda: open_store(url)), url)


def test_sqlite_url_without_a_path_is_refused() -> None:
    assert "names no file" in error_of(lambda: open_store("sqlite:///"))


# --- PostgreSQL ------------------------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_tables_are_prefixed_ledger(postgres_url: str) -> None:
    open_store(postgres_url).close()
    with psycopg.connect(libpq_url(postgres_url)) as conn:
        tables = {
            row[0]
            for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
    assert tables == {
        "ledger_meta",
        "ledger_workspaces",
        "ledger_users",
        "ledger_events",
        "ledger_intents",
    }


@pytest.mark.postgres
@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg"])
def test_postgres_url_schemes_are_accepted(postgres_url: str, scheme: str) -> None:
    url = f"{scheme}://{postgres_url.split('://', 1)[1]}"
    with open_store(url) as opened:
        assert isinstance(opened, PostgresLedgerStore)


def test_unreachable_postgres_is_one_line_without_the_password() -> None:
    url = "postgresql://braze:hunter2-pw@127.0.0.1:1/ledger"
    message = error_of(lambda: open_store(url))
    one_line_naming(message, "postgresql://braze:***@127.0.0.1:1/ledger")
    assert "is unreachable" in message
    assert "hunter2" not in message


@pytest.mark.postgres
def test_refused_login_is_one_line_without_the_password(postgres_server_url: str) -> None:
    host = postgres_server_url.split("@", 1)[1]
    url = f"postgresql://ghost:hunter2-pw@{host}"
    message = error_of(lambda: open_store(url))
    one_line_naming(message, mask_url(url))
    assert "refused the login" in message
    assert "hunter2" not in message


@pytest.mark.postgres
def test_driver_message_is_scrubbed_of_the_password(postgres_server_url: str) -> None:
    # The database is named like the password, so the server's own message quotes it.
    host = postgres_server_url.split("@", 1)[1].rsplit("/", 1)[0]
    url = f"postgresql://postgres:hunter2pw@{host}/hunter2pw"
    with pytest.raises(LedgerError) as caught:
        open_store(url)
    assert "hunter2pw" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None
    assert 'database "***" does not exist' in str(caught.value)


def test_missing_postgres_driver_names_the_extra_to_install() -> None:
    script = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from target_braze.ledger_store import LedgerError, open_store\n"
        "try:\n    open_store('postgresql://u:pw@127.0.0.1:1/db')\n"
        "except LedgerError as exc:\n    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == (
        "ledger_url postgresql://u:***@127.0.0.1:1/db needs the PostgreSQL driver: "
        "pip install target-braze[postgres]"
    )


# --- both backends: event states (schema 4) ----------------------------------------------------


def in_flight(*keys: int, detail: str = '{"stream": "s"}') -> list[tuple[int, int, int, int, str]]:
    """Rows for `add_intent`: each key its own check, user 1, day 100."""
    return [(k, k, 1, 100, detail) for k in keys]


def test_events_are_in_flight_from_their_intent_until_confirmed(store: LedgerStore) -> None:
    ws = store.register_workspace("name:a", ENDPOINT, None)

    assert store.add_intent(ws, [], in_flight(1, 2)) == 0  # no users: no intent row

    assert store.read_event_states([1, 2]) == {1: (1, IN_FLIGHT), 2: (2, IN_FLIGHT)}
    store.write(ws, [], [(1, 1, 1, 100)])
    assert store.read_event_states([1, 2]) == {1: (1, CONFIRMED), 2: (2, IN_FLIGHT)}
    assert [e.key for e in store.unsettled_events(ws)] == [2]


def test_one_intent_write_records_users_and_in_flight_events(store: LedgerStore) -> None:
    ws = store.register_workspace("name:a", ENDPOINT, None)
    store.write(ws, [(5, 5, b"e")], [])

    intent = store.add_intent(ws, [5], in_flight(7))

    assert intent > 0
    assert store.read_event_states([7]) == {7: (7, IN_FLIGHT)}
    assert store.recover_intents(ws) == 1  # the user's intent is there too


def test_an_ambiguous_event_becomes_unknown_and_a_rejected_one_is_forgotten(
    store: LedgerStore,
) -> None:
    ws = store.register_workspace("name:a", ENDPOINT, None)
    store.add_intent(ws, [], in_flight(1, 2, 3))
    store.write(ws, [], [(3, 3, 1, 100)])

    store.write(ws, [], [], unknown_events=[1, 3], forgotten_events=[2, 3])

    # A confirmed row is neither made unknown nor forgotten.
    assert store.read_event_states([1, 2, 3]) == {1: (1, UNKNOWN), 3: (3, CONFIRMED)}


def test_a_stopped_runs_in_flight_events_become_unknown_in_its_workspace_only(
    store: LedgerStore,
) -> None:
    one = store.register_workspace("name:one", ENDPOINT, None)
    two = store.register_workspace("name:two", ENDPOINT, None)
    store.add_intent(one, [], in_flight(1, 2))
    store.add_intent(two, [], in_flight(3))
    store.write(one, [], [(2, 2, 1, 100), (4, 4, 1, 100)])

    assert store.recover_in_flight(one) == 1

    states = store.read_event_states([1, 2, 3, 4])
    assert states == {1: (1, UNKNOWN), 2: (2, CONFIRMED), 3: (3, IN_FLIGHT), 4: (4, CONFIRMED)}
    assert store.recover_in_flight(one) == 0


def test_unsettled_events_carry_what_was_sent_and_when(store: LedgerStore) -> None:
    ws = store.register_workspace("name:a", ENDPOINT, None)
    store.add_intent(ws, [], in_flight(9, detail='{"stream": "orders", "user": "u1"}'))
    store.write(ws, [], [], unknown_events=[9])

    (event,) = store.unsettled_events(ws)

    assert (event.key, event.state, event.detail) == (
        9,
        UNKNOWN,
        '{"stream": "orders", "user": "u1"}',
    )
    assert event.sent_at is not None
    assert event.sent_at.startswith("20")


def test_releasing_forgets_chosen_or_all_unconfirmed_events_and_never_confirmed_ones(
    store: LedgerStore,
) -> None:
    ws = store.register_workspace("name:a", ENDPOINT, None)
    other = store.register_workspace("name:b", ENDPOINT, None)
    store.add_intent(ws, [], in_flight(1, 2, 3))
    store.add_intent(other, [], in_flight(4))
    store.write(ws, [], [(5, 5, 1, 100)], unknown_events=[1, 2])

    assert store.release_events(ws, [1, 5, 4]) == 1  # 5 confirmed, 4 another workspace's
    assert store.release_events(ws, None) == 2

    assert store.read_event_states([1, 2, 3, 4, 5]) == {4: (4, IN_FLIGHT), 5: (5, CONFIRMED)}


def test_the_retention_purge_keeps_events_of_unknown_delivery(store: LedgerStore) -> None:
    ws = store.register_workspace("name:a", ENDPOINT, None)
    store.add_intent(ws, [], in_flight(1))  # day 100
    store.write(ws, [], [(2, 2, 1, 100)], unknown_events=[1])

    assert store.forget_events_before(ws, 200) == 1

    assert store.read_event_states([1, 2]) == {1: (1, UNKNOWN)}


def test_a_version_3_ledger_keeps_its_events_as_confirmed(ledger_url: str) -> None:
    """The real migration to 4: events written before states existed were all confirmed."""
    prefix = "ledger_" if ledger_url.startswith("postgres") else ""
    dialect = "postgres" if prefix else "sqlite"
    v3 = [step.format(p=prefix) for step in ledger_store._V1_SCHEMA[dialect]]
    for migration in ledger_store.MIGRATIONS:
        if migration.to_version <= 3:
            v3 += [step.format(p=prefix) for step in getattr(migration, dialect)]
    v3.append(f"INSERT INTO {prefix}meta (key, value) VALUES ('schema_version', '3')")
    v3.append(f"INSERT INTO {prefix}events (k, chk, ws, user_k, day) VALUES (7, 8, 1, 2, 100)")
    if dialect == "sqlite":
        path = Path(ledger_url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path) as conn:
            for step in v3:
                conn.execute(step)
    else:
        with psycopg.connect(libpq_url(ledger_url)) as conn:
            for step in v3:
                conn.execute(step)

    with open_store(ledger_url) as store:
        assert store.read_event_states([7]) == {7: (8, CONFIRMED)}
        assert store.read_events([7]) == {7: 8}
        assert store.unsettled_events(1) == []
        store.add_intent(1, [], in_flight(9))
        assert store.recover_in_flight(1) == 1
