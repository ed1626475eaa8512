"""UsersTrackBatch: object and byte limits, merging per user, error index mapping; how
Delivery stages objects for the ledger's lookups."""

import orjson
from braze_target_harness import builder_for
from target_braze.ledger import Selection
from target_braze.pack import RequestLimits, UsersTrackBatch
from target_braze.report import RunStats
from target_braze.send import Delivery

BUILDER = builder_for()


def limits(max_objects: int = 75, max_bytes: int = 3_900_000, per_array: bool = False):
    return RequestLimits(max_objects=max_objects, max_bytes=max_bytes, per_array=per_array)


def obj(user: str, seq: int, **attrs):
    return BUILDER.build({"customer_id": user, **attrs}, seq, seq + 1)


def test_never_more_than_max_objects():
    batch = UsersTrackBatch(limits(max_objects=3))
    assert [batch.try_add(obj(f"u{i}", i)) for i in range(3)] == [True, True, None]  # full
    assert batch.try_add(obj("u9", 9)) is False
    assert len(batch) == 3


def test_never_more_than_max_bytes():
    batch = UsersTrackBatch(limits(max_objects=75, max_bytes=400))
    added = 0
    while batch.try_add(obj(f"user-{added}", added, peak_note="x" * 50)):
        added += 1
    assert 1 <= added < 75
    assert len(batch.body()) <= 400


def test_same_user_is_merged_into_one_object():
    batch = UsersTrackBatch(limits())
    batch.try_add(obj("u1", 0, a=1))
    batch.try_add(obj("u2", 1, a=2))
    batch.try_add(obj("u1", 2, b=3))
    body = orjson.loads(batch.body())
    assert body == {
        "attributes": [{"external_id": "u1", "a": 1, "b": 3}, {"external_id": "u2", "a": 2}]
    }
    assert batch.record_count == 3


def test_errors_index_maps_to_the_object_of_that_array():
    batch = UsersTrackBatch(limits())
    for i in range(3):
        batch.try_add(obj(f"u{i}", i))
    found = batch.index_of("attributes", 2)
    assert found is not None
    assert found.identifier == "u2"
    assert batch.index_of("attributes", 3) is None
    assert batch.index_of("events", 0) is None


def test_halves_keep_every_object_once():
    batch = UsersTrackBatch(limits())
    for i in range(5):
        batch.try_add(obj(f"u{i}", i))
    halves = batch.halves()
    assert [len(h) for h in halves] == [2, 3]
    ids = [o.identifier for h in halves for o in h.objects]
    assert ids == [f"u{i}" for i in range(5)]


class _Sender:
    """Stands in for UsersTrackSender: records the requests, says whether it is idle."""

    def __init__(self, idle: bool) -> None:
        self.requests: list[int] = []
        self._idle = idle

    def idle(self) -> bool:
        return self._idle

    def submit(self, batch: UsersTrackBatch) -> None:
        self.requests.append(len(batch))


class _Ledger:
    """Stands in for Ledger: sends everything, records how many objects each lookup had."""

    def __init__(self) -> None:
        self.lookups: list[int] = []

    def select(self, objects):  # type: ignore[no-untyped-def]
        self.lookups.append(len(objects))
        return Selection(send=list(objects))


def _deliver(records: int, *, idle: bool) -> tuple[list[int], list[int]]:
    sender, ledger = _Sender(idle), _Ledger()
    delivery = Delivery(limits(), sender, None, RunStats(60.0), ledger)  # type: ignore[arg-type]
    for i in range(records):
        delivery.add(obj(f"u{i}", i, a=i))
    return ledger.lookups, sender.requests


def test_with_requests_in_flight_the_ledger_looks_up_eight_requests_at_once():
    lookups, requests = _deliver(1300, idle=False)

    assert lookups == [600, 600]  # 100 still staged
    assert requests == [75] * 16


def test_with_nothing_in_flight_one_request_s_worth_is_looked_up_and_sent_at_once():
    lookups, requests = _deliver(160, idle=True)

    assert lookups == [75, 75]
    assert requests == [75, 75]
