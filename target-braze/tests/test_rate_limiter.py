"""RateLimiter: each slot is held from send until one window after the response."""

import threading

from target_braze.rate_limiter import RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_limit_slots_then_blocks_until_a_slot_cools():
    clock = FakeClock()
    limiter = RateLimiter(2, 3.0, clock=clock)
    limiter.acquire()
    limiter.acquire()
    limiter.release()
    limiter.release()  # both cool until t=3
    acquired = threading.Event()

    def third() -> None:
        limiter.acquire()
        acquired.set()

    thread = threading.Thread(target=third, daemon=True)
    thread.start()
    assert not acquired.wait(0.2)
    clock.now = 3.0
    assert acquired.wait(2.0)
    thread.join(2.0)


def test_in_flight_requests_hold_their_slots():
    clock = FakeClock()
    limiter = RateLimiter(1, 1.0, clock=clock)
    limiter.acquire()
    blocked = threading.Event()

    def second() -> None:
        limiter.acquire()
        blocked.set()

    threading.Thread(target=second, daemon=True).start()
    clock.now = 100.0  # time passes, but the first request has not answered yet
    assert not blocked.wait(0.2)
    limiter.release()
    clock.now = 101.0
    assert blocked.wait(2.0)


def test_zero_limit_never_blocks():
    limiter = RateLimiter(0, 3.0)
    for _ in range(10_000):
        limiter.acquire()
        limiter.release()


def test_low_remaining_pauses_new_requests_until_reset():
    clock = FakeClock()
    limiter = RateLimiter(100, 3.0, clock=clock)
    limiter.observe(remaining=1, reset_in=5.0, in_flight=4)
    done = threading.Event()
    threading.Thread(target=lambda: (limiter.acquire(), done.set()), daemon=True).start()
    assert not done.wait(0.2)
    clock.now = 5.0
    assert done.wait(2.0)


def test_plenty_remaining_does_not_pause():
    clock = FakeClock()
    limiter = RateLimiter(100, 3.0, clock=clock)
    limiter.observe(remaining=50, reset_in=5.0, in_flight=4)
    limiter.acquire()
