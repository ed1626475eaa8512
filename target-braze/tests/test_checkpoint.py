"""Checkpoint: STATE is released only once every earlier record is settled."""

from target_braze.checkpoint import Checkpoint


def make() -> tuple[Checkpoint, list[dict]]:
    emitted: list[dict] = []
    return Checkpoint(emitted.append), emitted


def test_state_not_emitted_before_its_records_are_settled():
    checkpoint, emitted = make()
    seqs = [checkpoint.register_record() for _ in range(3)]
    checkpoint.add_state({"n": 3})
    checkpoint.settle(seqs[:2])
    assert emitted == []
    checkpoint.settle(seqs[2:])
    assert emitted == [{"n": 3}]


def test_out_of_order_settlement_releases_only_the_contiguous_prefix():
    checkpoint, emitted = make()
    a, b = checkpoint.register_record(), checkpoint.register_record()
    checkpoint.add_state({"after": "a,b"})
    c = checkpoint.register_record()
    checkpoint.add_state({"after": "c"})
    checkpoint.settle([c])
    checkpoint.settle([b])
    assert emitted == []
    checkpoint.settle([a])
    assert emitted == [{"after": "c"}]  # latest releasable state only


def test_state_with_no_records_before_it_is_emitted_at_once():
    checkpoint, emitted = make()
    checkpoint.add_state({"bookmark": 1})
    assert emitted == [{"bookmark": 1}]


def test_identical_state_is_not_repeated():
    checkpoint, emitted = make()
    checkpoint.add_state({"bookmark": 1})
    seq = checkpoint.register_record()
    checkpoint.add_state({"bookmark": 1})
    checkpoint.settle([seq])
    assert emitted == [{"bookmark": 1}]


def test_state_held_while_release_is_vetoed_then_released_by_a_later_settlement():
    # The veto is the rejected-ratio guard: a later settlement re-checks it.
    allowed = {"now": False}
    emitted: list[dict] = []
    checkpoint = Checkpoint(emitted.append, lambda: allowed["now"])
    first = checkpoint.register_record()
    checkpoint.add_state({"bookmark": 2})
    second = checkpoint.register_record()
    checkpoint.settle([first])
    assert emitted == []
    allowed["now"] = True
    checkpoint.settle([second])
    assert emitted == [{"bookmark": 2}]
