"""InFlight: slots sized by rate x latency, up to the ceiling; one sender thread per slot."""

from __future__ import annotations

import threading
import time

from target_braze.send import MINIMUM_SLOTS, InFlight


class Threads:
    def __init__(self) -> None:
        self.opened = 0

    def open(self) -> None:
        self.opened += 1


def never() -> None:
    raise AssertionError("the main thread should not have waited 0.5 s")


def test_the_first_slots_open_as_requests_need_them_without_waiting():
    threads = Threads()
    slots = InFlight(100, threads.open, lambda _age, _rate: 0.0)
    for _ in range(MINIMUM_SLOTS):
        slots.take(never)
    assert threads.opened == MINIMUM_SLOTS
    assert slots.current == slots.peak == MINIMUM_SLOTS


def test_more_open_when_rate_times_latency_asks_and_never_past_the_ceiling():
    threads = Threads()
    needed = {"n": 0.0}
    slots = InFlight(10, threads.open, lambda _age, _rate: needed["n"])
    for _ in range(MINIMUM_SLOTS):
        slots.take(never)
    needed["n"] = 7.2
    for _ in range(4):
        slots.take(never)  # 8 = ceil(7.2): no wait for a release
    assert slots.current == 8
    needed["n"] = 50.0
    slots.take(never)
    slots.take(never)
    assert slots.current == slots.peak == 10 == threads.opened
    waiting = threading.Thread(target=slots.take, args=(lambda: None,))
    waiting.start()
    waiting.join(0.3)
    assert waiting.is_alive()  # the ceiling holds
    slots.release()
    waiting.join(5)
    assert not waiting.is_alive()
    assert slots.ceiling_waits == 1  # it waited while 50 would have been sent
    assert threads.opened == 10


def test_while_the_limit_holds_requests_no_slot_opens():
    threads = Threads()
    slots = InFlight(100, threads.open, lambda _age, _rate: 0.0)  # 0: senders wait for the limit
    for _ in range(MINIMUM_SLOTS):
        slots.take(never)
    waiting = threading.Thread(target=slots.take, args=(lambda: None,))
    waiting.start()
    waiting.join(0.3)
    assert waiting.is_alive()
    slots.release()
    waiting.join(5)
    assert threads.opened == MINIMUM_SLOTS
    assert slots.ceiling_waits == 0


def test_the_age_of_the_requests_in_flight_bounds_the_latency_before_any_answer():
    ages: list[float] = []

    def needed(age: float, _rate: float) -> float:
        ages.append(age)
        return 100.0 * age  # 100 requests/s

    slots = InFlight(100, Threads().open, needed)
    for _ in range(MINIMUM_SLOTS):
        slots.take(never)
    slots.take(lambda: None)  # no release ever: it opens once the requests are old enough
    assert slots.current == MINIMUM_SLOTS + 1
    assert ages[-1] >= 0.04  # 100/s x 0.04 s = 4 in flight already: it had to wait for more


def test_a_stretch_of_idle_slots_shrinks_what_is_allowed():
    slots = InFlight(100, Threads().open, lambda _age, _rate: 40.0)
    for _ in range(MINIMUM_SLOTS + 1):
        slots.take(lambda: None)
    assert slots.allowed == 40
    for _ in range(MINIMUM_SLOTS + 1):
        slots.release()
    for _ in range(600):  # two stretches: halving, then the minimum
        slots.take(never)
        slots.release()
    assert slots.allowed == MINIMUM_SLOTS


def test_the_rate_requests_are_built_at_bounds_what_rate_x_latency_asks():
    rates: list[float] = []

    def needed(_age: float, rate: float) -> float:
        rates.append(rate)
        return min(1000.0, rate) * 0.01  # 10 ms latency

    threads = Threads()
    slots = InFlight(100, threads.open, needed)
    for _ in range(MINIMUM_SLOTS):
        time.sleep(0.02)  # each request takes at least 20 ms to build: 50 a second at most
        slots.take(never)
    releaser = threading.Timer(0.3, slots.release)
    releaser.start()
    time.sleep(0.02)
    slots.take(lambda: None)  # waits: rate x latency asks for 1 at 50/s, so none opens
    releaser.join()
    assert rates
    assert max(rates) <= 50.0
    assert slots.allowed == MINIMUM_SLOTS
    assert threads.opened == MINIMUM_SLOTS


def test_a_wait_for_answers_that_arrived_opens_no_slot():
    """The answers are here and wait for our own threads: more in flight would not help."""
    awaiting = {"n": 0}
    threads = Threads()
    slots = InFlight(100, threads.open, lambda _age, _rate: 40.0, lambda: awaiting["n"])
    for _ in range(MINIMUM_SLOTS):
        slots.take(never)
    releaser = threading.Timer(0.3, slots.release)
    releaser.start()
    slots.take(lambda: None)
    releaser.join()
    assert slots.allowed == MINIMUM_SLOTS  # 0 of 4 awaited Braze: nothing opened
    awaiting["n"] = MINIMUM_SLOTS  # every request in flight waits for Braze's answer
    slots.take(lambda: None)
    assert slots.allowed == 40
    assert slots.current == MINIMUM_SLOTS + 1


def test_once_answers_came_a_long_wait_alone_opens_no_slot():
    """After the first answer the measured latency rules: a wait a busy machine stretched
    is not taken for Braze's latency."""
    threads = Threads()
    slots = InFlight(100, threads.open, lambda age, _rate: 100.0 * age)  # 0 ms measured
    for _ in range(MINIMUM_SLOTS):
        slots.take(never)
    slots.release()  # an answer
    slots.take(never)  # all slots busy again
    releaser = threading.Timer(0.3, slots.release)
    releaser.start()
    slots.take(lambda: None)  # waits 0.3 s: 100/s x 0.3 s would be 30
    releaser.join()
    assert slots.allowed == MINIMUM_SLOTS
    assert threads.opened == MINIMUM_SLOTS
