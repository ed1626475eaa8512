"""`Checkpoint`: releases a tap's STATE only once every record before it is settled.

A record is *settled* when Braze accepted it, when it was written to the rejects output
with a reason, or when the delivery ledger showed Braze already holds it. Records get
increasing sequence numbers as they arrive; a STATE received after record N-1 may be
released once records 0..N-1 are all settled. Requests complete out of order (they run
concurrently), so settled numbers are kept in a set until the contiguous prefix can
absorb them: memory stays bounded by what is in flight.

Released states go to a queue; `StateOutput` writes them from its own thread, so no
lock is ever held while STATE is written.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

from target_braze.private_files import unlink_beneath

logger = logging.getLogger("target_braze")


class SettledFile:
    """A BATCH file whose records are all settled: it may be deleted (it holds customer data)."""

    __slots__ = ("beneath", "path")

    def __init__(self, path: Path, beneath: Path) -> None:
        """Remember the file and the directory it must be removed from."""
        self.path = path
        self.beneath = beneath


Released = dict[str, Any] | SettledFile | None


class Checkpoint:
    """Bookkeeping between records, settlements (any thread) and STATE messages."""

    def __init__(self) -> None:
        """Nothing received, nothing settled."""
        self._lock = threading.Lock()
        self._next_seq = 0
        self._settled_prefix = 0  # every seq below this is settled
        self._settled_out_of_order: set[int] = set()
        self._pending: deque[tuple[int, dict[str, Any] | SettledFile]] = deque()
        #: Releasable states and files, in release order (`StateOutput` consumes it).
        self.released: queue.SimpleQueue[Released] = queue.SimpleQueue()

    def register_record(self) -> int:
        """Give the next record its sequence number (called by the reading thread only)."""
        seq = self._next_seq
        self._next_seq = seq + 1
        return seq

    @property
    def received(self) -> int:
        """Records received so far."""
        return self._next_seq

    def add_state(self, state: dict[str, Any]) -> None:
        """Queue a STATE behind every record received so far; release it if possible."""
        with self._lock:
            received = self._next_seq
            pending = self._pending
            if pending and pending[-1][0] == received and isinstance(pending[-1][1], dict):
                pending.pop()  # nothing arrived in between: the newer state wins
            pending.append((received, state))
            self._release()

    def add_file(self, path: Path, beneath: Path) -> None:
        """A BATCH file whose records are all received: release it once they are settled.

        It is removed through `beneath`, the directory the target may clean.
        """
        with self._lock:
            self._pending.append((self._next_seq, SettledFile(path, beneath)))
            self._release()

    def settle(self, seqs: Iterable[int]) -> None:
        """Mark records settled (accepted, rejected or unchanged); release what that allows."""
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

    def _release(self) -> None:
        latest = None
        pending = self._pending
        while pending and pending[0][0] <= self._settled_prefix:
            item = pending.popleft()[1]
            if isinstance(item, SettledFile):
                self.released.put(item)
            else:
                latest = item
        if latest is not None:
            self.released.put(latest)


class StateOutput:
    """Writes released STATE messages to stdout from one thread, in release order.

    It also deletes BATCH files once their records are settled.

    `may_release` is the rejected-ratio guard: while it says no, the newest released
    state is held back (a later one supersedes it); `close` writes a held state if the
    guard allows it by then. A dry run writes nothing.
    """

    def __init__(
        self,
        released: queue.SimpleQueue[Released],
        may_release: Callable[[], bool],
        *,
        write: bool = True,
        on_written: Callable[[], None] = lambda: None,
    ) -> None:
        """Start the writer thread."""
        self._released = released
        self._may_release = may_release
        self._write = write
        self._on_written = on_written
        self._held: dict[str, Any] | None = None
        self._last_written: dict[str, Any] | None = None
        self.failure: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="state-output", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (state := self._released.get()) is not None:
            if isinstance(state, SettledFile):
                try:
                    unlink_beneath(state.beneath, state.path)
                except OSError as exc:
                    logger.warning(
                        "Could not delete the settled BATCH file %s: %s", state.path, exc
                    )
                continue
            if self._may_release():
                self._held = None
                self._emit(state)
            else:
                self._held = state

    def _emit(self, state: dict[str, Any]) -> None:
        if state == self._last_written:
            return
        self._last_written = state
        if not self._write or self.failure is not None:
            return
        try:
            sys.stdout.write(orjson.dumps(state).decode() + "\n")
            sys.stdout.flush()
        except OSError as exc:  # a closed pipe: the run must fail, not lose STATE silently
            self.failure = exc
            return
        self._on_written()

    def close(self, *, release_held: bool = True) -> None:
        """Write what is queued (and a held state the guard now allows), then stop."""
        self._released.put(None)
        self._thread.join()
        if release_held and self._held is not None and self._may_release():
            self._emit(self._held)
        self._held = None
