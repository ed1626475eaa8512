"""In-flight slots: opened while Braze's latency keeps them busy, retired when idle."""

from __future__ import annotations

import json
import threading

from braze_target_harness import run_target, target_config
from target_braze.in_flight import SETTLE_REQUESTS, InFlightSlots, SlotDecider
from test_target_delivery import stream_of

BUILD = 0.001  # seconds the main thread spends building one request, in these rules


def slots_after(decider: SlotDecider, requests: int, waited: float) -> int:
    for _ in range(requests):
        decider.after_request(BUILD, waited)
    return decider.slots


def test_a_slow_braze_opens_slots_one_settling_period_apart_up_to_the_maximum():
    decider = SlotDecider(maximum=4)
    assert decider.slots == 1
    assert slots_after(decider, SETTLE_REQUESTS - 1, waited=0.05) == 1  # not before settling
    assert slots_after(decider, 1, waited=0.05) == 2
    assert slots_after(decider, SETTLE_REQUESTS, waited=0.05) == 3
    assert slots_after(decider, 10 * SETTLE_REQUESTS, waited=0.05) == 4  # never past it


def test_short_waits_for_our_own_threads_open_nothing():
    # A request held up by the GIL ends as soon as the main thread waits: a short wait.
    decider = SlotDecider(maximum=16)
    assert slots_after(decider, 20 * SETTLE_REQUESTS, waited=BUILD / 10) == 1


def test_slots_nobody_waits_for_are_retired_down_to_one():
    decider = SlotDecider(maximum=16)
    slots_after(decider, 40 * SETTLE_REQUESTS, waited=0.05)
    assert decider.slots == 16
    # The long waits fade from the average first; then one slot goes per settling period.
    first = next(n for n in range(1, 200) if slots_after(decider, 1, waited=0.0) < 16)
    assert first > SETTLE_REQUESTS
    seen = [slots_after(decider, 1, waited=0.0) for _ in range(20 * SETTLE_REQUESTS)]
    assert seen == sorted(seen, reverse=True)  # only ever fewer
    assert seen[-1] == 1
    # At most one slot per settling period: the run keeps slots while the averages adapt.
    assert seen.count(15) >= SETTLE_REQUESTS


def test_retired_slots_are_held_back_and_come_back_before_a_new_thread_opens():
    opened: list[int] = []
    ticks = iter(range(10**6))
    slots = InFlightSlots(4, lambda: opened.append(1), clock=lambda: next(ticks) * 1.0)
    slots.take(lambda: None)  # the first slot opens its thread
    assert len(opened) == 1
    # Every request waits longer than it took to build (the fake clock ticks 1 s a call),
    # and each one's slot is released at once by a "sender".
    for _ in range(5 * SETTLE_REQUESTS):
        slots.release()
        slots.take(lambda: None)
    assert slots.slots == 4
    assert len(opened) == 4
    # Now building takes a second and no request waits at all: slots are retired...
    now = [0.0]
    slots._clock = lambda: now[0]
    slots.release()
    for _ in range(20 * SETTLE_REQUESTS):
        now[0] += 1.0
        slots.take(lambda: None)
        slots.release()
    assert slots.slots == 1
    free = 0
    while slots._free.acquire(blocking=False):
        free += 1
    assert free == 1  # only the one slot in use is ever handed out
    slots.release()
    # ...and when requests wait again, the retired slots come back, with no new thread.
    slots._clock = lambda: next(ticks) * 1.0
    slots._last = slots._clock()
    for _ in range(5 * SETTLE_REQUESTS):
        slots.take(lambda: None)
        slots.release()
    assert slots.slots == 4
    assert len(opened) == 4


def test_a_release_from_another_thread_ends_a_wait():
    slots = InFlightSlots(1, lambda: None)
    slots.take(lambda: None)  # the one slot, now busy
    threading.Timer(0.05, slots.release).start()
    waits: list[int] = []
    slots.take(lambda: waits.append(1))  # blocks until the timer releases the slot
    assert slots.slots == 1


def test_in_flight_requests_grow_with_brazes_latency_and_never_past_the_maximum(braze, tmp_path):
    braze.configure(latency_ms=[100, 100])
    config = target_config(braze, tmp_path, max_concurrent_requests=4, max_objects_per_request=2)
    run = run_target(config, stream_of(160), tmp_path)  # 80 requests
    assert run.returncode == 0, run.stderr
    stats = braze.stats()
    assert stats["requests"] == 80
    # Each request waits ~100 ms for Braze while building one takes far less: slots open,
    # one settling period apart, up to the maximum and never beyond it.
    assert stats["max_in_flight"] == 4
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["sender_threads"] == 4
