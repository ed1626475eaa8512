"""Checkpoint and StateOutput: STATE is released only once every earlier record is settled."""

import io
import json
from contextlib import redirect_stdout

from target_braze.checkpoint import Checkpoint, StateOutput


def released(checkpoint: Checkpoint) -> list[dict]:
    out = []
    while not checkpoint.released.empty():
        out.append(checkpoint.released.get())
    return out


def test_state_not_released_before_its_records_are_settled():
    checkpoint = Checkpoint()
    seqs = [checkpoint.register_record() for _ in range(3)]
    checkpoint.add_state({"n": 3})
    checkpoint.settle(seqs[:2])
    assert released(checkpoint) == []
    checkpoint.settle(seqs[2:])
    assert released(checkpoint) == [{"n": 3}]


def test_out_of_order_settlement_releases_only_the_contiguous_prefix():
    checkpoint = Checkpoint()
    a, b = checkpoint.register_record(), checkpoint.register_record()
    checkpoint.add_state({"after": "a,b"})
    c = checkpoint.register_record()
    checkpoint.add_state({"after": "c"})
    checkpoint.settle([c])
    checkpoint.settle([b])
    assert released(checkpoint) == []
    checkpoint.settle([a])
    assert released(checkpoint) == [{"after": "c"}]  # latest releasable state only


def test_state_with_no_records_before_it_is_released_at_once():
    checkpoint = Checkpoint()
    checkpoint.add_state({"bookmark": 1})
    assert released(checkpoint) == [{"bookmark": 1}]


def run_output(states: list[dict], may_release=lambda: True) -> list[dict]:
    checkpoint = Checkpoint()
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        output = StateOutput(checkpoint.released, may_release)
        for value in states:
            checkpoint.add_state(value)
        output.close()
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_identical_state_is_not_repeated():
    assert run_output([{"bookmark": 1}, {"bookmark": 1}, {"bookmark": 2}]) == [
        {"bookmark": 1},
        {"bookmark": 2},
    ]


def test_state_held_while_the_guard_says_no_then_written_at_close_if_it_allows():
    # The guard is the rejected-ratio check: a held state is written once it allows it.
    allowed = {"now": False}
    checkpoint = Checkpoint()
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        output = StateOutput(checkpoint.released, lambda: allowed["now"])
        checkpoint.add_state({"bookmark": 1})
        checkpoint.add_state({"bookmark": 2})
        allowed["now"] = True
        output.close()
    assert [json.loads(line) for line in buffer.getvalue().splitlines()][-1] == {"bookmark": 2}


def test_state_never_written_while_the_guard_says_no():
    assert run_output([{"bookmark": 1}], may_release=lambda: False) == []


def test_dry_run_output_writes_nothing():
    checkpoint = Checkpoint()
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        output = StateOutput(checkpoint.released, lambda: True, write=False)
        checkpoint.add_state({"bookmark": 1})
        output.close()
    assert buffer.getvalue() == ""
