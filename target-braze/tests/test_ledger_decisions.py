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
