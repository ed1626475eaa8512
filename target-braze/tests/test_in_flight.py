"""InFlight: slots sized by rate x latency, up to the ceiling; one sender thread per slot."""

from __future__ import annotations

import threading

from target_braze.in_flight import MINIMUM_SLOTS, InFlight


class Threads:
    def __init__(self) -> None:
        self.opened = 0

    def open(self) -> None:
        self.opened += 1


def never() -> None:
    raise AssertionError("the main thread should not have waited 0.5 s")


def test_the_first_slots_open_as_requests_need_them_without_waiting():
    threads = Threads()
    slots = InFlight(100, threads.open, lambda _age: 0.0)
    for _ in range(MINIMUM_SLOTS):
        slots.take(never)
    assert threads.opened == MINIMUM_SLOTS
    assert slots.current == slots.peak == MINIMUM_SLOTS


def test_more_open_when_rate_times_latency_asks_and_never_past_the_ceiling():
    threads = Threads()
    needed = {"n": 0.0}
    slots = InFlight(10, threads.open, lambda _age: needed["n"])
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
    slots = InFlight(100, threads.open, lambda _age: 0.0)  # 0: senders wait for the limit
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

    def needed(age: float) -> float:
        ages.append(age)
        return 100.0 * age  # 100 requests/s

    slots = InFlight(100, Threads().open, needed)
    for _ in range(MINIMUM_SLOTS):
        slots.take(never)
    slots.take(lambda: None)  # no release ever: it opens once the requests are old enough
    assert slots.current == MINIMUM_SLOTS + 1
    assert ages[-1] >= 0.04  # 100/s x 0.04 s = 4 in flight already: it had to wait for more


def test_a_stretch_of_idle_slots_shrinks_what_is_allowed():
    slots = InFlight(100, Threads().open, lambda _age: 40.0)
    for _ in range(MINIMUM_SLOTS + 1):
        slots.take(lambda: None)
    assert slots.allowed == 40
    for _ in range(MINIMUM_SLOTS + 1):
        slots.release()
    for _ in range(600):  # two stretches: halving, then the minimum
        slots.take(never)
        slots.release()
    assert slots.allowed == MINIMUM_SLOTS
