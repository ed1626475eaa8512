"""`RejectedRecords`: the rejects output, one JSON line per record Braze will not get."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

import orjson

from target_braze.jsonl_output import JsonlOutput
from target_braze.objects import Origin
from target_braze.report import RunStats

logger = logging.getLogger("target_braze")


def describe_origin(origin: Origin) -> str:
    """`line 12`, or `line 3 (batch file /tmp/x.jsonl, line 40)`."""
    if isinstance(origin, int):
        return f"line {origin}"
    line, path, file_line = origin
    return f"line {line} (batch file {path}, line {file_line})"


def _origin_fields(origin: Origin) -> dict[str, Any]:
    if isinstance(origin, int):
        return {"input_line": origin}
    line, path, file_line = origin
    return {"input_line": line, "batch_file": path, "batch_line": file_line}


def _default(value: Any) -> Any:
    # Records may still hold Decimal or other reader types; keep them readable.
    return str(value)


#: A rejected record is written whole up to this many bytes of JSON, else truncated.
MAX_RECORD_EXCERPT_BYTES = 64 * 1024


def _record_fields(record: dict[str, Any]) -> dict[str, Any]:
    """The record as the rejects line carries it: whole, or its JSON's start, saying so.

    A record JSON cannot carry (a 65-bit integer, nesting too deep for orjson) is written
    as far as Python's own encoder manages, or else by its reason alone.
    """
    try:
        encoded = orjson.dumps(record, default=_default, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        try:
            encoded = json.dumps(record, default=str).encode()
        except (ValueError, TypeError, RecursionError) as exc:
            return {"record": None, "record_unwritable": f"{type(exc).__name__}: {exc}"[:200]}
        else:
            return _excerpt(encoded)
    if len(encoded) <= MAX_RECORD_EXCERPT_BYTES:
        return {"record": orjson.Fragment(encoded)}  # encoded once, embedded as is
    return _excerpt(encoded)


def _excerpt(encoded: bytes) -> dict[str, Any]:
    if len(encoded) <= MAX_RECORD_EXCERPT_BYTES:
        return {"record_json": encoded.decode("utf-8", "replace")}
    return {
        "record_truncated": (
            f"the record's JSON is {len(encoded)} bytes; record_json holds its first "
            f"{MAX_RECORD_EXCERPT_BYTES}"
        ),
        "record_json": encoded[:MAX_RECORD_EXCERPT_BYTES].decode("utf-8", "ignore"),
    }


class RejectedRecords:
    """Writes rejected records to JSONL, each with the run id, the time and its input line.

    The file is appended to across runs; `run_id` (also in the run report and the log
    summary) tells one run's rejects from another's. Without `rejected_records_path` each
    rejection is logged as a WARNING line with the same JSON, so a rejected record is
    never silently dropped.
    """

    def __init__(self, path: str | None, stats: RunStats, run_id: str) -> None:
        """Open the output lazily: a clean run leaves no empty file behind."""
        self._output = JsonlOutput(path, setting="rejected_records_path") if path else None
        self._stats = stats
        self._run_id = run_id

    def write(
        self,
        stream: str,
        identifier: str | None,
        record: dict[str, Any],
        reason: str,
        kind: str,
        origin: Origin,
        *,
        unknown: bool = False,
    ) -> None:
        """Record one rejection with its reason; `kind` groups reasons in the summary.

        `unknown`: a record of unknown delivery, counted as such rather than as rejected.
        """
        line = orjson.dumps(
            {
                "run_id": self._run_id,
                "rejected_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                "stream": stream,
                "identifier": identifier,
                **_origin_fields(origin),
                "reason": reason,
                "error_type": kind,
                **_record_fields(record),
            },
            default=_default,
            option=orjson.OPT_NON_STR_KEYS,
        )
        if unknown:
            self._stats.add(unknown=1)
        else:
            self._stats.add_rejection(kind, identifier or describe_origin(origin))
        if self._output is None:
            logger.warning("Rejected record: %s", line.decode())
            return
        self._output.write_line(line)

    def close(self) -> None:
        """Close the output."""
        if self._output is not None:
            self._output.close()
