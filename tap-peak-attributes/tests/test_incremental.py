"""Incremental contract on SQLite and a real PostgreSQL: all, nothing, exactly the changed."""

from __future__ import annotations

from tap_peak_attributes import sample
from tap_peak_attributes.incremental import LAST_ID_KEY


def test_runs_emit_everything_then_nothing_then_exactly_the_changed(warehouse_url, run_cli):
    sample.generate(warehouse_url, 50, seed=1)
    config = {"sqlalchemy_url": warehouse_url}

    first = run_cli(config)
    assert first.returncode == 0, first.stderr
    assert first.ids() == [sample.customer_id(n) for n in range(1, 51)]

    second = run_cli(config, first.final_state)
    assert second.returncode == 0, second.stderr
    assert second.records() == []

    changed = sample.model_run(warehouse_url, 10, seed=3)
    third = run_cli(config, second.final_state)
    assert third.ids() == changed
    assert {r["updated_at"] for r in third.records()} == {"2026-11-28T06:00:00.000000+00:00"}


def test_state_carries_timestamp_and_id_in_fixed_format(warehouse_url, run_tap):
    sample.generate(warehouse_url, 5)
    run = run_tap({"sqlalchemy_url": warehouse_url})
    assert run.final_state == {
        "bookmarks": {
            "customer_attributes": {
                "replication_key": "updated_at",
                "replication_key_value": "2026-11-21T06:00:00.000000+00:00",
                LAST_ID_KEY: "C0000005",
            }
        }
    }


def test_resuming_from_any_mid_tie_checkpoint_loses_and_repeats_nothing(warehouse_url, run_tap):
    # All 20 customers share one updated_at: every checkpoint splits the tie group.
    sample.generate(warehouse_url, 20)
    config = {"sqlalchemy_url": warehouse_url, "state_message_frequency": 3}
    full = run_tap(config)
    everyone = full.ids()
    assert len(everyone) == 20
    checkpoints = [s for s in full.states() if s.get("bookmarks")][:-1]
    assert len(checkpoints) >= 6
    for checkpoint in checkpoints:
        done = checkpoint["bookmarks"]["customer_attributes"][LAST_ID_KEY]
        emitted_before = everyone[: everyone.index(done) + 1]
        resumed = run_tap(config, checkpoint).ids()
        assert emitted_before + resumed == everyone


def test_state_is_emitted_every_n_records(sqlite_url, run_tap):
    sample.generate(sqlite_url, 10)
    run = run_tap({"sqlalchemy_url": sqlite_url, "state_message_frequency": 4})
    last_ids = [
        s["bookmarks"]["customer_attributes"][LAST_ID_KEY]
        for s in run.states()
        if s.get("bookmarks")
    ]
    assert last_ids == ["C0000004", "C0000008", "C0000010"]


def test_integer_ids_order_and_resume_numerically(warehouse_url, run_tap, execute):
    execute(
        warehouse_url,
        "CREATE TABLE scores (customer_id INTEGER, score FLOAT, updated_at TIMESTAMP)",
    )
    execute(
        warehouse_url,
        "INSERT INTO scores VALUES (:i, 0.5, '2026-11-21 06:00:00')",
        params=[{"i": i} for i in (2, 10, 9, 100)],
    )
    config = {
        "sqlalchemy_url": warehouse_url,
        "schema": "public",
        "streams": [{"name": "scores", "table": "scores"}],
        "state_message_frequency": 2,
    }
    run = run_tap(config)
    assert run.ids() == ["2", "9", "10", "100"]
    assert run.states()[0]["bookmarks"]["scores"][LAST_ID_KEY] == "9"
    assert run_tap(config, run.states()[0]).ids() == ["10", "100"]


def test_state_holds_only_the_bookmark_fields(sqlite_url, run_tap):
    # `_write_starting_replication_value` is replaced by a no-op: singer-sdk's version would
    # add a `starting_replication_value` the tap never reads to every mid-run STATE.
    sample.generate(sqlite_url, 12)
    run = run_tap({"sqlalchemy_url": sqlite_url, "state_message_frequency": 5})
    entries = [s["bookmarks"]["customer_attributes"] for s in run.states() if s.get("bookmarks")]
    assert len(entries) >= 3
    for entry in entries:
        assert set(entry) == {"replication_key", "replication_key_value", LAST_ID_KEY}
