"""Ledger (one class, a real SQLite ledger): what it drops, what it records, and when."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from contextlib import closing

import pytest
from braze_target_harness import builder_for
from target_braze import ledger as ledger_module
from target_braze.ledger import Ledger
from target_braze.objects import BrazeObject
from target_braze.settings import apply_defaults

ENDPOINT = "https://rest.iad-03.braze.com"
REAL_TODAY = ledger_module.today


def open_ledger(tmp_path, **settings) -> Ledger:
    config = apply_defaults(
        {"ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}", "api_key": "k", **settings}
    )
    return Ledger(config, ENDPOINT, "k", dry_run=False)


BUILDER = builder_for()


@pytest.fixture(autouse=True)
def _prompt_writer(monkeypatch):
    """The writer commits what it holds at once instead of gathering for up to a second.

    These tests confirm one request at a time and wait for its commit: with the
    production grouping each `confirm` took a second, the file's tests minutes. What
    they prove (the decisions) does not depend on how writes are grouped.
    """
    monkeypatch.setattr(ledger_module, "_GROUP_SECONDS", 0.0)


def intents(tmp_path) -> int:
    """How many intents the ledger file holds (committed, as another process sees them)."""
    with closing(sqlite3.connect(tmp_path / "ledger.sqlite")) as conn:
        return int(conn.execute("SELECT count(*) FROM intents").fetchone()[0])


def objects(*values: dict) -> list[BrazeObject]:
    built = [BUILDER.build({"customer_id": "u1", **v}, i, i + 1) for i, v in enumerate(values)]
    assert all(isinstance(obj, BrazeObject) for obj in built)
    return built  # type: ignore[return-value]


def confirm(ledger: Ledger, confirmed: Sequence[BrazeObject]) -> None:
    """Confirm as Braze would and wait until the writer settled them."""
    settled = threading.Event()
    ledger.confirmed(confirmed, lambda _: settled.set())
    assert settled.wait(10)


def test_values_confirmed_longer_ago_than_the_retention_are_sent_again(tmp_path, monkeypatch):
    ledger = open_ledger(tmp_path, ledger_retention_days=30)
    (first,) = objects({"a": 1})
    confirm(ledger, ledger.select([first]).send)
    ledger.close()
    monkeypatch.setattr(ledger_module, "today", lambda: REAL_TODAY() + 29)
    assert open_ledger(tmp_path, ledger_retention_days=30).select(objects({"a": 1})).unchanged
    monkeypatch.setattr(ledger_module, "today", lambda: REAL_TODAY() + 31)

    selection = open_ledger(tmp_path, ledger_retention_days=30).select(objects({"a": 1}))

    assert [obj.body for obj in selection.send] == [{"external_id": "u1", "a": 1}]


def test_a_later_object_merges_into_what_is_committed_when_an_earlier_one_is_rejected(tmp_path):
    ledger = open_ledger(tmp_path)
    (base,) = objects({"a": 1, "b": 1})
    confirm(ledger, ledger.select([base]).send)
    (earlier,) = ledger.select(objects({"a": 2})).send  # pending, then rejected by Braze
    (later,) = ledger.select(objects({"b": 2})).send  # built while `earlier` was pending
    ledger.forget_pending([earlier])
    confirm(ledger, [later])

    (again,) = ledger.select(objects({"a": 2, "b": 2})).send

    # Braze holds a=1 (the change to 2 was rejected) and b=2: only a is sent.
    assert again.body == {"external_id": "u1", "a": 2}


def test_nothing_is_recorded_before_braze_confirms(tmp_path):
    ledger = open_ledger(tmp_path)
    (sent,) = ledger.select(objects({"a": 1})).send
    ledger.forget_pending([sent])  # never confirmed

    assert ledger.select(objects({"a": 1})).send


def test_a_dry_run_ledger_settles_confirmations_without_writing(tmp_path):
    open_ledger(tmp_path).close()  # create it
    config = apply_defaults(
        {"ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}", "api_key": "k"}
    )
    dry = Ledger(config, ENDPOINT, "k", dry_run=True)
    confirm(dry, dry.select(objects({"a": 1})).send)
    dry.close()

    assert open_ledger(tmp_path).select(objects({"a": 1})).send


def test_a_run_stopped_between_brazes_answer_and_the_ledger_write_never_skips(tmp_path):
    first = open_ledger(tmp_path)
    confirm(first, first.select(objects({"a": 1, "b": 1})).send)
    # Braze applies a=2, then the run dies before its ledger write: only the intent remains.
    # `select` wrote the intent before the object could be packed into a request.
    first.select(objects({"a": 2}))
    # (no confirmation: the process is gone)

    second = open_ledger(tmp_path)
    (back,) = second.select(objects({"a": 1, "b": 1})).send

    # a=1 equals the stale entry, yet Braze may hold a=2: the user is sent in full.
    assert back.body == {"external_id": "u1", "a": 1, "b": 1}


def test_a_settled_request_leaves_no_intent_behind(tmp_path):
    first = open_ledger(tmp_path)
    confirm(first, first.select(objects({"a": 1})).send)
    (changed,) = first.select(objects({"a": 2})).send
    assert intents(tmp_path) == 1  # a user the ledger holds: written before it is sent
    confirm(first, [changed])
    first.close()

    assert intents(tmp_path) == 0
    assert open_ledger(tmp_path).select(objects({"a": 2})).unchanged


def test_a_user_the_ledger_never_saw_needs_no_intent(tmp_path):
    """A first sync writes no intents: after a crash the user has no row, so it is resent."""
    first = open_ledger(tmp_path)
    (sent,) = first.select(objects({"a": 1})).send
    assert intents(tmp_path) == 0
    # (no confirmation: the process is gone)

    (again,) = open_ledger(tmp_path).select(objects({"a": 1})).send

    assert again.body == sent.body == {"external_id": "u1", "a": 1}


def test_a_second_object_of_a_user_still_on_its_way_needs_an_intent(tmp_path):
    """Its write lands over the row the first one's write may have committed meanwhile."""
    first = open_ledger(tmp_path)
    (earlier,) = first.select(objects({"a": 1})).send
    assert first.select(objects({"a": 2})).send  # pending while `earlier` is
    assert intents(tmp_path) == 1
    confirm(first, [earlier])  # committed; a=2 was applied by Braze, then the run died

    (back,) = open_ledger(tmp_path).select(objects({"a": 1})).send

    # a=1 equals the committed entry, yet Braze holds a=2: the user is sent in full.
    assert back.body == {"external_id": "u1", "a": 1}


def test_users_stored_in_the_record_s_layout_get_the_same_decisions_as_any_other(
    tmp_path, monkeypatch
):
    """The array path (keys in the stored order) decides exactly as the general one.

    Two ledgers get the same values: `fast` always in one key order (after a user's first
    write its records match the stored layout), `general` in a new random order each time
    (almost never the stored layout). Both send the same attributes, settle the same
    records as unchanged, and end up storing the same entries; rejected requests and a
    user twice in one batch (the first still in flight) included.
    """
    import random

    from target_braze.ledger import decode_entries

    ledgers = {}
    for name in ("fast", "general"):
        (tmp_path / name).mkdir()
        ledgers[name] = open_ledger(tmp_path / name)
    owner = {id(ledger): name for name, ledger in ledgers.items()}
    calls = {"fast": 0, "general": 0}
    original = Ledger._trim_layout

    def counting(self: Ledger, *args):  # type: ignore[no-untyped-def]
        calls[owner[id(self)]] += 1
        return original(self, *args)

    monkeypatch.setattr(Ledger, "_trim_layout", counting)
    names = [f"a{i}" for i in range(6)]
    # Two of them equal in canonical form: the same digest whichever is sent.
    choices = [1, 2, None, "x", ["x", "y"], {"b": 2, "c": "x"}, {"c": "x", "b": 2}]
    rng, shuffles = random.Random(11), random.Random(12)
    for _ in range(40):
        users = rng.sample([f"u{i}" for i in range(12)], 5)
        users.append(rng.choice(users))
        values = [{n: rng.choice(choices) for n in names} for _ in users]
        verdicts = {}
        rejected = rng.random() < 0.2
        for name, ledger in ledgers.items():
            built = []
            for user, record in zip(users, values, strict=True):
                order = names if name == "fast" else shuffles.sample(names, len(names))
                body = {"customer_id": user, **{n: record[n] for n in order}}
                built.append(BUILDER.build(body, 0, 1))
            selection = ledger.select(built)  # type: ignore[arg-type]
            verdicts[name] = (
                [dict(obj.body) for obj in selection.send],
                [obj.body["external_id"] for obj in selection.unchanged],
            )
            if rejected:
                ledger.forget_pending(selection.send)
            else:
                confirm(ledger, selection.send)
        assert verdicts["fast"] == verdicts["general"]
    assert calls["fast"] > 100
    assert calls["general"] < calls["fast"] // 10
    stored = {}
    for name, ledger in ledgers.items():
        keys = [ledger._keys.user("external_id", f"u{i}")[0] for i in range(12)]
        rows = ledger._reader.read_users(keys)  # type: ignore[union-attr]
        stored[name] = {k: (chk, decode_entries(blob)) for k, (chk, blob) in rows.items()}
    assert len(stored["fast"]) == 12
    assert stored["fast"] == stored["general"]


def test_a_record_equal_to_the_stored_row_is_settled_by_one_comparison(tmp_path, monkeypatch):
    """Equal values' JSON settles a record without reading the row's values; a change goes
    per value."""
    ledger = open_ledger(tmp_path)
    confirm(ledger, ledger.select(objects({"a": 1, "b": "x"})).send)

    def no_loads(*_args):  # type: ignore[no-untyped-def]
        raise AssertionError("the stored values were decoded for an unchanged record")

    with monkeypatch.context() as patched:
        patched.setattr(ledger_module, "_loads", no_loads)
        assert ledger.select(objects({"a": 1, "b": "x"})).unchanged

    (changed,) = ledger.select(objects({"a": 1, "b": "y"})).send
    assert changed.body == {"external_id": "u1", "b": "y"}


def test_the_row_path_decides_as_the_per_value_path(tmp_path, monkeypatch):
    """Same records, two ledgers: one decides rows of the record's layout on the row's
    bytes, the other always per value. Both send the same, settle the same and store the
    same entries (rejections, a user twice in one batch, records of another shape, and
    values `==` confuses: 1, 1.0, True, and nested objects holding them).
    """
    import random

    from target_braze.ledger import decode_entries

    def play(ledger: Ledger) -> tuple[list, dict]:
        rng = random.Random(5)
        verdicts = []
        for _ in range(80):
            users = rng.sample([f"u{i}" for i in range(8)], 4)
            users.append(rng.choice(users))
            built = []
            for user in users:
                names = ["a", "b", "c"] if rng.random() < 0.9 else ["c", "a"]
                long = {"k": "x" * 200, "m": "y" * 100}
                choices = [1, 2, 1.0, True, "1", {"n": 1}, {"n": True}, long]
                record = {"customer_id": user, **{n: rng.choice(choices) for n in names}}
                built.append(BUILDER.build(record, 0, 1))
            selection = ledger.select(built)  # type: ignore[arg-type]
            verdicts.append(
                (
                    [dict(obj.body) for obj in selection.send],
                    [obj.body["external_id"] for obj in selection.unchanged],
                )
            )
            if rng.random() < 0.15:
                ledger.forget_pending(selection.send)
            else:
                confirm(ledger, selection.send)
        keys = [ledger._keys.user("external_id", f"u{i}")[0] for i in range(8)]
        rows = ledger._reader.read_users(keys)  # type: ignore[union-attr]
        return verdicts, {k: (chk, decode_entries(blob)) for k, (chk, blob) in rows.items()}

    decided = []
    original = Ledger._trim_layout

    def counting(self: Ledger, *args):  # type: ignore[no-untyped-def]
        verdict = original(self, *args)
        decided.append(verdict is not ledger_module._GENERAL)
        return verdict

    (tmp_path / "row").mkdir()
    (tmp_path / "per_value").mkdir()
    monkeypatch.setattr(Ledger, "_trim_layout", counting)
    by_row = play(open_ledger(tmp_path / "row"))
    monkeypatch.setattr(Ledger, "_trim_layout", lambda *_: ledger_module._GENERAL)
    per_value = play(open_ledger(tmp_path / "per_value"))

    assert sum(decided) > 10  # the row's path decided, often
    assert by_row == per_value


def test_a_long_value_is_stored_as_its_digest_and_still_compared(tmp_path):
    """A value longer than `_LONG_VALUE` costs 8 bytes of digest, not its length."""
    ledger = open_ledger(tmp_path)
    long = "x" * 255
    confirm(ledger, ledger.select(objects({"a": 1, "b": long})).send)
    ledger.close()
    with closing(sqlite3.connect(tmp_path / "ledger.sqlite")) as conn:
        (length,) = conn.execute("SELECT length(entries) FROM users").fetchone()
    assert length < 100
    again = open_ledger(tmp_path)

    assert again.select(objects({"a": 1, "b": long})).unchanged
    (changed,) = again.select(objects({"a": 1, "b": long[:-1] + "y"})).send
    assert changed.body == {"external_id": "u1", "b": long[:-1] + "y"}


def test_personal_fields_are_stored_as_digests_only(tmp_path):
    """The ledger file holds no e-mail address or name in clear, and still compares them."""
    ledger = open_ledger(tmp_path)
    person = {"email": "ada@example.com", "first_name": "Ada", "peak_segment": "loyal"}
    confirm(ledger, ledger.select(objects(person)).send)
    ledger.close()
    raw = (tmp_path / "ledger.sqlite").read_bytes()
    for wal in tmp_path.glob("ledger.sqlite-wal"):
        raw += wal.read_bytes()
    assert b"loyal" in raw  # a custom attribute's short value is stored as it is
    assert b"ada@example.com" not in raw
    assert b"Ada" not in raw
    again = open_ledger(tmp_path)

    assert again.select(objects(person)).unchanged
    (changed,) = again.select(objects({**person, "first_name": "Grace"})).send
    assert changed.body == {"external_id": "u1", "first_name": "Grace"}


def test_a_row_that_cannot_be_read_sends_every_attribute(tmp_path):
    """A damaged row is no entries: the user's values are sent, never skipped."""
    ledger = open_ledger(tmp_path)
    confirm(ledger, ledger.select(objects({"a": 1, "b": "x"})).send)
    ledger.close()
    with closing(sqlite3.connect(tmp_path / "ledger.sqlite")) as conn, conn:
        conn.execute("UPDATE users SET entries = X'0500676172626167650a'")
    again = open_ledger(tmp_path)

    (sent,) = again.select(objects({"a": 1, "b": "x"})).send
    assert sent.body == {"external_id": "u1", "a": 1, "b": "x"}
    confirm(again, [sent])
    again.close()
    with closing(sqlite3.connect(tmp_path / "ledger.sqlite")) as conn, conn:
        # The record's own slots, then too few bytes for the days and the object's digest.
        (row,) = conn.execute("SELECT entries FROM users").fetchone()
        conn.execute("UPDATE users SET entries = ?", (row[: 2 + 8 + 3],))
    (sent,) = open_ledger(tmp_path).select(objects({"a": 1, "b": "x"})).send
    assert sent.body == {"external_id": "u1", "a": 1, "b": "x"}


def test_a_first_sync_of_a_new_workspace_looks_up_only_users_it_may_have_written(tmp_path):
    """No lookup for a user the new workspace cannot hold; a user sent earlier in the run
    is looked up (and its confirmed values settle it)."""
    ledger = open_ledger(tmp_path)
    looked_up: list[list[int]] = []
    reader = ledger._reader
    assert reader is not None
    read_users = reader.read_users

    def counting(keys):  # type: ignore[no-untyped-def]
        looked_up.append(list(keys))
        return read_users(keys)

    reader.read_users = counting  # type: ignore[method-assign]
    first = [BUILDER.build({"customer_id": f"u{i}", "a": 1}, i, i + 1) for i in range(50)]
    confirm(ledger, ledger.select(first).send)  # type: ignore[arg-type]
    assert looked_up == []

    again = ledger.select(objects({"a": 1}))

    assert again.unchanged
    assert looked_up == [[ledger._keys.user("external_id", "u1")[0]]]


def test_confirmations_wait_for_the_writer_once_enough_are_queued(tmp_path, monkeypatch):
    """A ledger slower than Braze slows the senders down instead of filling memory."""
    monkeypatch.setattr(ledger_module, "_QUEUED_OBJECTS", 1)
    ledger = open_ledger(tmp_path)
    committing, release = threading.Event(), threading.Event()
    commit = ledger._commit

    def slow_commit(*args):  # type: ignore[no-untyped-def]
        committing.set()
        assert release.wait(30)
        commit(*args)

    monkeypatch.setattr(ledger, "_commit", slow_commit)
    first, second = objects({"a": 1}), [*objects({"b": 1})]
    settled = []
    ledger.confirmed(ledger.select(first).send, settled.append)
    assert committing.wait(10)  # the writer holds the first, not yet through
    sender = threading.Thread(
        target=ledger.confirmed, args=(ledger.select(second).send, settled.append)
    )
    sender.start()
    while sender.is_alive() and not ledger._room._waiters:  # type: ignore[attr-defined]
        threading.Event().wait(0.001)

    assert sender.is_alive()  # waiting for room, its confirmation not queued
    release.set()
    sender.join(30)
    ledger.close()
    assert not sender.is_alive()
    assert len(settled) == 2


def test_two_objects_of_a_user_merged_into_one_request_leave_no_intent_behind(tmp_path):
    """The request carries one object for both: settling it settles both their intents."""
    ledger = open_ledger(tmp_path)
    confirm(ledger, ledger.select(objects({"a": 1, "b": 1})).send)
    earlier, later = ledger.select(objects({"a": 2}, {"b": 2})).send
    assert intents(tmp_path) == 1
    earlier.merge(later)  # as UsersTrackBatch does with one user's objects in a request
    confirm(ledger, [earlier])
    ledger.close()

    assert intents(tmp_path) == 0
    assert open_ledger(tmp_path).select(objects({"a": 2, "b": 2})).unchanged


def test_a_trimmed_object_keeps_its_control_keys(tmp_path):
    ledger = open_ledger(tmp_path)
    builder = builder_for(update_existing_only=True)
    record = {"customer_id": "u1", "a": 1, "b": 1}
    confirm(ledger, ledger.select([builder.build(record, 0, 1)]).send)  # type: ignore[list-item]

    (changed,) = ledger.select([builder.build({**record, "b": 2}, 1, 2)]).send  # type: ignore[list-item]

    assert changed.body == {"external_id": "u1", "_update_existing_only": True, "b": 2}
    assert changed.data_points == 1


def stored_rows(directory) -> dict[int, bytes]:
    with closing(sqlite3.connect(directory / "ledger.sqlite")) as conn:
        return dict(conn.execute("SELECT k, entries FROM users").fetchall())


def test_a_first_sync_written_in_bulk_stores_the_rows_the_user_by_user_path_stores(
    tmp_path, monkeypatch
):
    values = [
        {"customer_id": f"u{i}", "score": i / 3, "segment": "x" * i, "vip": i % 2 == 0}
        for i in range(4)
    ]
    bulk, general = tmp_path / "bulk", tmp_path / "general"
    bulk.mkdir()
    general.mkdir()
    ledger = open_ledger(general)
    # A second shape in the selection: every user goes through `_trim`, one by one.
    mixed = objects(*values, {"customer_id": "other", "other": 1})
    confirm(ledger, ledger.select(mixed).send)
    ledger.close()

    def no_trim(*_args: object) -> None:
        raise AssertionError("a first sync of one shape is selected in bulk")

    monkeypatch.setattr(Ledger, "_trim", no_trim)
    ledger = open_ledger(bulk)
    selection = ledger.select(objects(*values))
    confirm(ledger, selection.send)
    ledger.close()

    assert len(selection.send) == 4
    written = stored_rows(bulk)
    assert len(written) == 4
    assert written == {key: row for key, row in stored_rows(general).items() if key in written}
