"""`RejectedRecords`: the rejects output, one JSON line per record Braze will not get."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import IO, Any

import orjson

from target_braze.report import RunStats

logger = logging.getLogger("target_braze")


def _default(value: Any) -> Any:
    # Records may still hold Decimal or other reader types; keep them readable.
    return str(value)


class RejectedRecords:
    """Writes rejected records (stream, identifier, record, reason) to JSONL.

    Without `rejected_records_path` each rejection is logged as a WARNING line with the
    same JSON, so a rejected record is never silently dropped.
    """

    def __init__(self, path: str | None, stats: RunStats) -> None:
        """Open the output lazily: a clean run leaves no empty file behind."""
        self._path = Path(path) if path else None
        self._file: IO[bytes] | None = None
        self._stats = stats
        self._lock = threading.Lock()

    def write(
        self,
        stream: str,
        identifier: str | None,
        record: dict[str, Any],
        reason: str,
        kind: str = "INVALID_RECORD",
    ) -> None:
        """Record one rejection with its reason; `kind` groups reasons in the summary."""
        line = orjson.dumps(
            {
                "stream": stream,
                "identifier": identifier,
                "reason": reason,
                "error_type": kind,
                "record": record,
            },
            default=_default,
            option=orjson.OPT_NON_STR_KEYS,
        )
        with self._lock:
            if self._path is None:
                logger.warning("Rejected record: %s", line.decode())
            else:
                if self._file is None:
                    self._path.parent.mkdir(parents=True, exist_ok=True)
                    self._file = self._path.open("ab")
                self._file.write(line + b"\n")
                self._file.flush()
        self._stats.add_rejection(kind, identifier)

    def close(self) -> None:
        """Flush and close the output."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
