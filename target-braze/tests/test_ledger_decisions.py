"""Ledger (one class, a real SQLite ledger): what it drops, what it records, and when."""

from __future__ import annotations

import threading
from collections.abc import Sequence

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
    (changed,) = first.select(objects({"a": 2})).send
    first.intend([changed])
    # (no confirmation: the process is gone)

    second = open_ledger(tmp_path)
    (back,) = second.select(objects({"a": 1, "b": 1})).send

    # a=1 equals the stale entry, yet Braze may hold a=2: the user is sent in full.
    assert back.body == {"external_id": "u1", "a": 1, "b": 1}


def test_a_settled_request_leaves_no_intent_behind(tmp_path):
    first = open_ledger(tmp_path)
    (sent,) = first.select(objects({"a": 1})).send
    first.intend([sent])
    confirm(first, [sent])
    first.close()

    assert open_ledger(tmp_path).select(objects({"a": 1})).unchanged


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
