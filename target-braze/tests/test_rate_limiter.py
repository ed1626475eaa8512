"""RateLimiter: each slot is held from send until one window after the response."""

import threading

from target_braze.rate_limiter import RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def acquire_in_background(limiter: RateLimiter) -> threading.Event:
    """Start an acquire on another thread; the event is set once it got its slot."""
    acquired = threading.Event()
    threading.Thread(target=lambda: (limiter.acquire(), acquired.set()), daemon=True).start()
    return acquired


def test_limit_slots_then_blocks_until_a_slot_cools():
    clock = FakeClock()
    limiter = RateLimiter(2, 3.0, clock=clock)
    limiter.acquire()
    limiter.acquire()
    limiter.release()
    limiter.release()  # both cool until t=3
    third = acquire_in_background(limiter)
    assert not third.wait(0.2)
    clock.now = 3.0
    assert third.wait(2.0)


def test_in_flight_requests_hold_their_slots():
    clock = FakeClock()
    limiter = RateLimiter(1, 1.0, clock=clock)
    limiter.acquire()
    second = acquire_in_background(limiter)
    clock.now = 100.0  # time passes, but the first request has not answered yet
    assert not second.wait(0.2)
    limiter.release()
    clock.now = 101.0
    assert second.wait(2.0)


def test_zero_limit_never_blocks():
    limiter = RateLimiter(0, 3.0)
    for _ in range(10_000):
        limiter.acquire()
        limiter.release()


def test_remaining_below_our_own_allowance_pauses_until_reset():
    # Other traffic shares Braze's limit: Braze has 1 left while our slots allow 100.
    clock = FakeClock()
    limiter = RateLimiter(100, 3.0, clock=clock)
    limiter.observe(remaining=1, reset_in=5.0, in_flight=4)
    waiting = acquire_in_background(limiter)
    assert not waiting.wait(0.2)
    clock.now = 5.0
    assert waiting.wait(2.0)


def test_remaining_matching_our_own_slots_does_not_pause():
    # Alone on the limit: Braze's count falls with ours; our slots already keep us under.
    clock = FakeClock()
    limiter = RateLimiter(3, 3.0, clock=clock)
    for _ in range(3):
        limiter.acquire()
    limiter.release()  # one slot cooling, two in flight: 0 of ours left
    limiter.observe(remaining=1, reset_in=5.0, in_flight=2)
    clock.now = 3.0  # the cooled slot is free again; a pause would hold it until t=5
    assert acquire_in_background(limiter).wait(2.0)


def test_without_a_client_limit_low_remaining_pauses():
    clock = FakeClock()
    limiter = RateLimiter(0, 3.0, clock=clock)
    limiter.observe(remaining=2, reset_in=5.0, in_flight=4)
    waiting = acquire_in_background(limiter)
    assert not waiting.wait(0.2)
    clock.now = 5.0
    assert waiting.wait(2.0)
