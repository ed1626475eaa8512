"""RateLimiter: a slot cools until max(send + window + margin, answer); an hourly budget."""

import logging
import threading

from target_braze.client import RateLimiter


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def acquire_in_background(limiter: RateLimiter) -> threading.Event:
    """Start an acquire on another thread; the event is set once it got its slot."""
    acquired = threading.Event()
    threading.Thread(target=lambda: (limiter.acquire(), acquired.set()), daemon=True).start()
    return acquired


def test_a_slot_cools_until_one_window_and_the_margin_after_its_send():
    clock = FakeClock()
    limiter = RateLimiter(2, 3.0, margin_seconds=0.1, clock=clock)
    first, second = limiter.acquire(), limiter.acquire()
    clock.now = 1.0  # answers after 1 s: the slots still cool until 3.1, not 4.1
    limiter.release(first)
    limiter.release(second)
    third = acquire_in_background(limiter)
    clock.now = 3.0
    assert not third.wait(0.3)
    clock.now = 3.1
    assert third.wait(2.0)


def test_in_flight_requests_hold_their_slots_until_their_answer():
    clock = FakeClock()
    limiter = RateLimiter(1, 1.0, margin_seconds=0.1, clock=clock)
    sent = limiter.acquire()
    second = acquire_in_background(limiter)
    clock.now = 100.0  # time passes, but the first request has not answered yet
    assert not second.wait(0.3)
    limiter.release(sent)  # answered after the window: the slot is free at once
    assert second.wait(2.0)


def test_zero_limit_never_blocks():
    # The clock never moves: a limiter that held any of these acquires would hold it
    # forever, and the thread would never finish (the wait below only bounds the hang).
    limiter = RateLimiter(0, 3.0, clock=FakeClock())
    done = threading.Event()

    def acquire_all() -> None:
        slots = [limiter.acquire() for _ in range(10_000)]  # none released in between
        for slot in slots:
            limiter.release(slot)
        done.set()

    threading.Thread(target=acquire_all, daemon=True).start()
    assert done.wait(120), "an acquire of a limiter with limit 0 blocked"


def test_remaining_below_our_own_allowance_pauses_until_reset():
    # Other traffic shares Braze's limit: Braze has 1 left while our slots allow 100.
    clock = FakeClock()
    limiter = RateLimiter(100, 3.0, clock=clock)
    limiter.observe(remaining=1, reset_in=5.0, in_flight=4)
    waiting = acquire_in_background(limiter)
    assert not waiting.wait(0.3)
    clock.now = 5.0
    assert waiting.wait(2.0)


def test_remaining_below_our_allowance_allows_what_braze_has_left_then_waits_for_reset():
    # An earlier run's requests are still in Braze's window (or others share the limit):
    # Braze has 10 left, 4 of ours are out and may not be counted yet, so 6 more go now
    # and the seventh waits for the reset, instead of everything waiting a whole window.
    clock = FakeClock()
    limiter = RateLimiter(100, 60.0, clock=clock)
    limiter.observe(remaining=10, reset_in=50.0, in_flight=4)
    sent: list[float] = []
    counting = threading.Thread(
        target=lambda: [sent.append(limiter.acquire()) for _ in range(7)], daemon=True
    )
    counting.start()
    counting.join(0.5)
    assert len(sent) == 6
    clock.now = 50.0
    counting.join(2.0)
    assert len(sent) == 7


def test_a_later_answer_with_room_ends_the_shared_budget():
    clock = FakeClock()
    limiter = RateLimiter(100, 60.0, clock=clock)
    limiter.observe(remaining=1, reset_in=50.0, in_flight=4)
    waiting = acquire_in_background(limiter)
    assert not waiting.wait(0.3)
    limiter.observe(remaining=100, reset_in=50.0, in_flight=0)  # the window moved on
    assert waiting.wait(2.0)


def test_remaining_matching_our_own_slots_does_not_pause():
    # Alone on the limit: Braze's count falls with ours; our slots already keep us under.
    clock = FakeClock()
    limiter = RateLimiter(3, 3.0, margin_seconds=0.0, clock=clock)
    sent = [limiter.acquire() for _ in range(3)]
    limiter.release(sent[0])  # one slot cooling, two in flight: 0 of ours left
    limiter.observe(remaining=1, reset_in=5.0, in_flight=2)
    clock.now = 3.0  # the cooled slot is free again; a pause would hold it until t=5
    assert acquire_in_background(limiter).wait(2.0)


def test_without_a_client_limit_low_remaining_pauses():
    clock = FakeClock()
    limiter = RateLimiter(0, 3.0, clock=clock)
    limiter.observe(remaining=2, reset_in=5.0, in_flight=4)
    waiting = acquire_in_background(limiter)
    assert not waiting.wait(0.3)
    clock.now = 5.0
    assert waiting.wait(2.0)


def test_the_hourly_budget_is_never_exceeded_and_its_line_is_logged_once(caplog):
    hour = 3600.0 * 500_000
    wall = FakeClock(hour + 10.0)
    limiter = RateLimiter(0, 3.0, per_hour=5, wall_clock=wall)
    sent: list[float] = []
    counting = threading.Thread(
        target=lambda: [sent.append(limiter.acquire()) for _ in range(8)], daemon=True
    )
    with caplog.at_level(logging.WARNING, logger="target_braze"):
        counting.start()
        counting.join(0.5)
        assert len(sent) == 5  # the hour's budget, and not one more
        wall.now = hour + 3000.0  # later in the same hour: still spent
        counting.join(0.3)
        assert len(sent) == 5
        wall.now = hour + 3600.0  # the next clock hour
        counting.join(2.0)
    assert len(sent) == 8
    budget_lines = [
        r.getMessage() for r in caplog.records if "max_requests_per_hour" in r.getMessage()
    ]
    assert len(budget_lines) == 1
    assert "the hourly budget, not this run, sets the pace" in budget_lines[0]


def test_a_request_sent_just_before_the_hour_ends_counts_in_the_next_hour_too():
    hour = 3600.0 * 500_000
    wall = FakeClock(hour + 3600.0 - 0.05)  # within the 0.1 s margin of the next hour
    limiter = RateLimiter(0, 3.0, margin_seconds=0.1, per_hour=2, wall_clock=wall)
    limiter.acquire()
    wall.now = hour + 3600.0 + 1.0
    limiter.acquire()  # the next hour's second request: its budget is now spent
    third = acquire_in_background(limiter)
    assert not third.wait(0.3)


def test_in_flight_needed_is_rate_times_latency_and_nothing_while_the_limit_holds_requests():
    clock = FakeClock()
    limiter = RateLimiter(300, 3.0, margin_seconds=0.0, clock=clock)
    sent = limiter.acquire()
    clock.now = 1.0
    limiter.release(sent)  # latency 1 s at 100 requests/s: about 100 in flight
    assert 100 <= limiter.in_flight_needed() <= 130
    assert limiter.in_flight_needed(latency_at_least=30.0) == 300  # never past the limit
    full = RateLimiter(1, 3.0, clock=clock)
    full.acquire()
    waiting = acquire_in_background(full)
    assert not waiting.wait(0.3)
    assert full.in_flight_needed(latency_at_least=5.0) == 0.0
