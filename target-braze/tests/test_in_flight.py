"""In-flight slots: opened while Braze's latency keeps them busy, retired when idle."""

from __future__ import annotations

import json
import threading

from braze_target_harness import run_target, target_config
from target_braze.in_flight import MINIMUM_SLOTS, SETTLE_REQUESTS, InFlightSlots, SlotDecider
from test_target_delivery import stream_of


def slots_after(decider: SlotDecider, requests: int, *, waited: bool, for_braze: bool) -> int:
    for _ in range(requests):
        decider.after_request(waited=waited, for_braze=for_braze)
    return decider.slots


def test_while_every_wait_is_for_braze_slots_double_one_settling_period_apart():
    decider = SlotDecider(maximum=12)
    assert decider.slots == 1
    assert slots_after(decider, SETTLE_REQUESTS - 1, waited=True, for_braze=True) == 1
    assert slots_after(decider, 1, waited=True, for_braze=True) == 2
    assert slots_after(decider, SETTLE_REQUESTS, waited=True, for_braze=True) == 4
    assert slots_after(decider, SETTLE_REQUESTS, waited=True, for_braze=True) == 8
    assert slots_after(decider, SETTLE_REQUESTS, waited=True, for_braze=True) == 12
    assert slots_after(decider, 10 * SETTLE_REQUESTS, waited=True, for_braze=True) == 12


def test_some_waits_for_braze_open_one_slot_at_a_time():
    decider = SlotDecider(maximum=16)
    for _ in range(3):
        slots_after(decider, 2, waited=True, for_braze=True)
        slots_after(decider, SETTLE_REQUESTS - 2, waited=False, for_braze=False)
    assert decider.slots == 4


def test_waits_for_our_own_threads_open_nothing():
    # The answer arrived but its thread waits for the GIL, the rate limit or a retry:
    # another slot would only add a thread.
    decider = SlotDecider(maximum=16)
    assert slots_after(decider, 20 * SETTLE_REQUESTS, waited=True, for_braze=False) == 1


def test_a_slot_free_at_every_request_of_a_period_is_retired_down_to_the_minimum():
    decider = SlotDecider(maximum=16)
    slots_after(decider, 40 * SETTLE_REQUESTS, waited=True, for_braze=True)
    assert decider.slots == 16
    assert slots_after(decider, SETTLE_REQUESTS, waited=False, for_braze=False) == 15
    assert slots_after(decider, SETTLE_REQUESTS - 1, waited=False, for_braze=False) == 15
    slots_after(decider, 1, waited=True, for_braze=False)  # one wait: that period keeps all
    assert decider.slots == 15
    assert slots_after(decider, 20 * SETTLE_REQUESTS, waited=False, for_braze=False) == 1
    decider = SlotDecider(maximum=16, minimum=4)
    slots_after(decider, 40 * SETTLE_REQUESTS, waited=True, for_braze=True)
    assert slots_after(decider, 40 * SETTLE_REQUESTS, waited=False, for_braze=False) == 4


class FakeSenders:
    """Stands in for the sender threads and their sockets.

    When the main thread, having waited, looks at the busy requests, every one is out
    waiting for Braze; Braze then answers one of them (its slot is released).
    """

    def __init__(self, unread: int = 0) -> None:
        self.threads = 0
        self.unread = unread  # answers arrived that their threads have not read yet
        self.slots: InFlightSlots | None = None

    def open(self) -> None:
        self.threads += 1

    def answers_pending(self) -> tuple[int, int]:
        assert self.slots is not None
        self.slots.release()
        return self.slots.slots - self.unread, self.unread


def test_the_first_slots_open_as_requests_need_them_without_waiting():
    senders = FakeSenders()
    slots = senders.slots = InFlightSlots(16, senders.open, senders.answers_pending)
    for opened in range(1, MINIMUM_SLOTS + 1):
        slots.take(lambda: None)  # every slot busy: one more opens, nobody waits
        assert senders.threads == opened
    assert slots.slots == MINIMUM_SLOTS


def test_retired_slots_are_held_back_and_come_back_before_a_new_thread_opens():
    most = 2 * MINIMUM_SLOTS
    senders = FakeSenders()
    slots = senders.slots = InFlightSlots(most, senders.open, senders.answers_pending)
    # Every slot stays busy until Braze answers: each take waits, for Braze.
    for _ in range(4 * SETTLE_REQUESTS):
        slots.take(lambda: None)
    assert (slots.slots, senders.threads) == (most, most)
    # Every request ends: all slots are free.
    while slots._free.acquire(blocking=False):
        pass
    for _ in range(most):
        slots.release()
    # Now a slot is always free when asked: slots are retired, down to the minimum...
    for _ in range(4 * most * SETTLE_REQUESTS):
        slots.take(lambda: None)
        slots.release()
    assert slots.slots == MINIMUM_SLOTS
    free = 0
    while slots._free.acquire(blocking=False):
        free += 1
    assert free == MINIMUM_SLOTS  # retired slots are never handed out
    # ...and when requests wait for Braze again, they come back, with no new thread.
    for _ in range(MINIMUM_SLOTS):
        slots._free.release()
    for _ in range(MINIMUM_SLOTS + 4 * SETTLE_REQUESTS):
        slots.take(lambda: None)
    assert (slots.slots, senders.threads) == (most, most)


def test_an_answer_waiting_for_its_thread_opens_no_slot():
    # The wait is ours (the GIL), not Braze's: another thread would make it worse.
    senders = FakeSenders(unread=1)
    slots = senders.slots = InFlightSlots(16, senders.open, senders.answers_pending)
    for _ in range(10 * SETTLE_REQUESTS):
        slots.take(lambda: None)
    assert (slots.slots, senders.threads) == (MINIMUM_SLOTS, MINIMUM_SLOTS)


def test_a_release_from_another_thread_ends_a_wait():
    slots = InFlightSlots(1, lambda: None, lambda: (0, 0))
    slots.take(lambda: None)  # the one slot, now busy
    threading.Timer(0.05, slots.release).start()
    waits: list[int] = []
    slots.take(lambda: waits.append(1))  # blocks until the timer releases the slot
    assert slots.slots == 1


def test_in_flight_requests_grow_with_brazes_latency_and_never_past_the_maximum(braze, tmp_path):
    braze.configure(latency_ms=[100, 100])
    config = target_config(braze, tmp_path, max_concurrent_requests=6, max_objects_per_request=2)
    run = run_target(config, stream_of(160), tmp_path)  # 80 requests
    assert run.returncode == 0, run.stderr
    stats = braze.stats()
    assert stats["requests"] == 80
    # Each request waits ~100 ms for Braze while building one takes far less: slots open,
    # one settling period apart, up to the maximum and never beyond it.
    assert stats["max_in_flight"] == 6
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["sender_threads"] == 6
