"""`Checkpoint`: releases a tap's STATE only once every record before it is settled.

A record is *settled* when Braze accepted it, or when it was written to the rejects
output with a reason. Records get increasing sequence numbers as they arrive; a STATE
message received after record N-1 may be released once records 0..N-1 are all settled.
Requests complete out of order (they run concurrently), so settled numbers are kept in a
set until the contiguous prefix can absorb them: memory stays bounded by what is in flight.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any


class Checkpoint:
    """Thread-safe bookkeeping between records, Braze's answers and STATE messages."""

    def __init__(
        self,
        emit: Callable[[dict[str, Any]], None],
        may_release: Callable[[], bool] = lambda: True,
    ) -> None:
        """`emit` writes a STATE; `may_release` can hold STATE back (rejected-ratio guard)."""
        self._emit = emit
        self._may_release = may_release
        self._lock = threading.Lock()
        self._next_seq = 0
        self._settled_prefix = 0  # every seq below this is settled
        self._settled_out_of_order: set[int] = set()
        self._pending: deque[tuple[int, dict[str, Any]]] = deque()
        self._last_emitted: dict[str, Any] | None = None

    def register_record(self) -> int:
        """Give the next record its sequence number."""
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            return seq

    def add_state(self, state: dict[str, Any]) -> None:
        """Queue a STATE behind every record received so far; release it if possible."""
        with self._lock:
            if self._pending and self._pending[-1][0] == self._next_seq:
                self._pending.pop()  # nothing arrived in between: the newer state wins
            self._pending.append((self._next_seq, state))
            self._release()

    def settle(self, seqs: Iterable[int]) -> None:
        """Mark records settled (accepted or rejected) and release what that allows."""
        with self._lock:
            extra = self._settled_out_of_order
            prefix = self._settled_prefix
            for seq in seqs:  # mostly ascending: most extend the prefix directly
                if seq == prefix:
                    prefix += 1
                else:
                    extra.add(seq)
            while prefix in extra:
                extra.remove(prefix)
                prefix += 1
            self._settled_prefix = prefix
            self._release()

    @property
    def received(self) -> int:
        """Records received so far."""
        return self._next_seq

    def _release(self) -> None:
        latest = None
        pending = self._pending
        while pending and pending[0][0] <= self._settled_prefix:
            if not self._may_release():
                return
            latest = pending.popleft()[1]
        if latest is not None and latest != self._last_emitted:
            self._last_emitted = latest
            self._emit(latest)
