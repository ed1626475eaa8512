"""The whole suite's scheduling: the longest tests start first, spread over the workers.

pytest-xdist's `worksteal` gives each worker a contiguous share of the collection, then
moves tests from the end of a busy worker's queue to an idle one. A long test collected
late therefore starts late and leaves the other core idle at the end (the suite's tail was
one 2-minute test). Under xdist the collection is reordered here: the tests
`tests/durations.json` knows as long go first, dealt longest first to the share with the
least work so far, and each share is then filled up with the other tests in collection
order (so a module's tests stay together); stealing evens out the rest. Durations are
seconds on a 2-core machine (setup, call and teardown), written by
`scripts/test-durations` from a run's `--durations=0` table; a test missing from it is
short, and a stale entry only changes the order.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

DURATIONS = Path(__file__).resolve().parent / "tests" / "durations.json"
# Tests shorter than this keep their place in the collection.
LONG_SECONDS = 5.0


def longest_first(items: list[pytest.Item], durations: dict[str, float], workers: int) -> list:
    """`items` reordered for `workers` contiguous shares, as worksteal splits them."""
    long = sorted(
        (item for item in items if durations.get(item.nodeid, 0.0) >= LONG_SECONDS),
        key=lambda item: -durations[item.nodeid],
    )
    if workers < 2 or not long:
        return items
    shares: list[list[pytest.Item]] = [[] for _ in range(workers)]
    loads = [0.0] * workers
    for item in long:
        least = loads.index(min(loads))
        shares[least].append(item)
        loads[least] += durations[item.nodeid]
    chosen = {id(item) for item in long}
    rest = [item for item in items if id(item) not in chosen]
    remaining = len(items)
    for index, share in enumerate(shares):
        size = remaining // (workers - index)  # worksteal's first split, share by share
        remaining -= size
        fill = size - len(share)
        if fill < 0:
            return items
        share.extend(rest[:fill])
        rest = rest[fill:]
    return [item for share in shares for item in share]


class _LongestFirst:
    """The reordering, as a plugin so that it runs after every other collection hook."""

    @pytest.hookimpl(trylast=True)  # after deselection (-m, -k): only what will run
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
        if not os.environ.get("PYTEST_XDIST_WORKER") or not DURATIONS.exists():
            return
        durations = {k: float(v) for k, v in json.loads(DURATIONS.read_text()).items()}
        items[:] = longest_first(items, durations, workers)


def pytest_configure(config: pytest.Config) -> None:
    """Register the reordering."""
    config.pluginmanager.register(_LongestFirst(), "longest-first")
