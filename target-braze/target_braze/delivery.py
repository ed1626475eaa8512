"""`Delivery`: one run's delivery machinery, assembled from the settings.

The target owns one `Delivery`; every sink shares it, so the rate limit, the in-flight
user rule and the checkpoint hold across streams.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import orjson

from target_braze.batching import RequestLimits, UsersTrackBatch
from target_braze.checkpoint import Checkpoint
from target_braze.client import BrazeClient, RetryPolicy, resolve_rest_endpoint
from target_braze.errors import ConfigError, RejectedRatioExceeded
from target_braze.mapping import BrazeObject
from target_braze.rate_limiter import RateLimiter
from target_braze.rejects import RejectedRecords
from target_braze.report import RunStats
from target_braze.sender import DryRunClient, Sends, UsersTrackSender

logger = logging.getLogger("target_braze")


class Delivery:
    """Stats, rejects output, checkpoint, client and sender for one run."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        """Check the delivery settings and build the pieces (no network yet)."""
        self.dry_run = bool(config.get("dry_run"))
        self.max_rejected_ratio = float(config.get("max_rejected_ratio") or 0.0)
        if not 0.0 <= self.max_rejected_ratio <= 1.0:
            raise ConfigError("max_rejected_ratio must be between 0 and 1, e.g. 0.05 for 5%")
        for name in ("max_objects_per_request", "max_concurrent_requests", "max_request_bytes"):
            if int(config.get(name) or 0) < 1:
                raise ConfigError(f"{name} must be at least 1")
        self.limits = RequestLimits(
            max_objects=int(config["max_objects_per_request"]),
            per_array=bool(config.get("legacy_per_array_limits")),
            max_bytes=int(config["max_request_bytes"]),
        )
        self.flush_interval = float(config.get("flush_interval_seconds") or 0.0)
        self.report_path: str | None = config.get("run_report_path")
        self._stdout_lock = threading.Lock()
        self.checkpoint = Checkpoint(self._emit_state, self._ratio_allows_release)
        self.stats = RunStats(
            float(config.get("progress_interval_seconds") or 5.0),
            records_in=lambda: self.checkpoint.received,
        )
        self.rejects = RejectedRecords(config.get("rejected_records_path"), self.stats)
        self.stop = threading.Event()
        self.client = self._client(config)
        self.sender = UsersTrackSender(
            self.client,
            self.checkpoint,
            self.rejects,
            self.stats,
            int(config["max_concurrent_requests"]),
            self.stop,
        )
        self._batch = UsersTrackBatch(self.limits)
        self._finished = False

    def add(self, obj: BrazeObject) -> None:
        """Put an object in the request being built; send the request when it is full."""
        now = time.monotonic()
        if not self._batch.try_add(obj, now):
            self.flush()
            self._batch.try_add(obj, now)
        if not self.limits.per_array and len(self._batch) >= self.limits.max_objects:
            self.flush()

    def flush(self) -> None:
        """Hand the request being built, if any, to the sender."""
        batch = self._batch
        if not len(batch):
            return
        self._batch = UsersTrackBatch(self.limits)
        self.stats.add(records_merged=batch.record_count - len(batch))
        self.sender.submit(batch)

    def flush_if_older_than(self, seconds: float) -> None:
        """Send a partly filled request that has waited at least `seconds`."""
        started = self._batch.first_added_at
        if started is not None and time.monotonic() - started >= seconds:
            self.flush()

    def _client(self, config: Mapping[str, Any]) -> Sends:
        if self.dry_run:
            logger.info(
                "Dry run: request bodies go to %s; nothing is sent and no STATE is emitted",
                config["dry_run_path"],
            )
            return DryRunClient(config["dry_run_path"], self.stats)
        if not config.get("api_key"):
            raise ConfigError(
                "api_key is not set: give a Braze REST API key with the users.track "
                "permission (TARGET_BRAZE_API_KEY), or set dry_run: true"
            )
        if not config.get("rest_endpoint"):
            raise ConfigError(
                "rest_endpoint is not set: give your Braze instance (e.g. US-03, EU-01) or "
                "its REST URL (TARGET_BRAZE_REST_ENDPOINT)"
            )
        limiter = RateLimiter(
            int(config.get("max_requests_per_window") or 0),
            float(config.get("rate_limit_window_seconds") or 3),
        )
        return BrazeClient(
            resolve_rest_endpoint(config["rest_endpoint"]),
            config["api_key"],
            limiter,
            self.stats,
            timeout=float(config["request_timeout_seconds"]),
            retry=RetryPolicy(
                max_retries=int(config["max_retries"]),
                base_seconds=float(config["retry_backoff_seconds"]),
            ),
            bulk_header=bool(config.get("bulk_header", True)),
            stop=self.stop,
            max_connections=int(config["max_concurrent_requests"]),
        )

    def _ratio_allows_release(self) -> bool:
        # While too many records are rejected, STATE stays put: fixing the cause (a wrong
        # identifier_property, say) and rerunning then resends the affected records.
        return self.stats.rejected_ratio() <= self.max_rejected_ratio

    def _emit_state(self, state: dict[str, Any]) -> None:
        if self.dry_run:
            return
        line = orjson.dumps(state).decode() + "\n"
        with self._stdout_lock:
            sys.stdout.write(line)
            sys.stdout.flush()
        self.stats.add(states_emitted=1)

    def finish(self) -> None:
        """End of input: everything was confirmed; check the ratio, summarise, report."""
        if self._finished:
            return
        self._finished = True
        self.sender.wait_all()
        self.sender.shutdown()
        self._close_outputs()
        ratio = self.stats.rejected_ratio()
        outcome = "success"
        if self.stats.counts["rejected"]:
            outcome = "partial_success" if ratio <= self.max_rejected_ratio else "failed"
        logger.info("Run summary (%s): %s", outcome, self.stats.summary())
        if self.stats.rejected_by_reason:
            logger.warning("Rejected records by reason: %s", self.stats.rejection_summary())
        self._report(outcome)
        if outcome == "failed":
            raise RejectedRatioExceeded(
                f"{self.stats.counts['rejected']} of {self.checkpoint.received} records "
                f"({ratio:.1%}) were rejected, above max_rejected_ratio "
                f"{self.max_rejected_ratio:.1%}; see the rejects output for reasons. STATE was "
                "held back, so a rerun after the fix resends them"
            )

    def fail(self, outcome: str = "failed") -> None:
        """The run is ending early: stop the senders, keep the rejects, report it."""
        if self._finished:
            return
        self._finished = True
        self.stop.set()
        self.sender.shutdown()
        self._close_outputs()
        log = logger.warning if outcome == "interrupted" else logger.error
        log("Run %s: %s", outcome, self.stats.summary())
        self._report(outcome)

    def _close_outputs(self) -> None:
        self.rejects.close()
        if isinstance(self.client, DryRunClient):
            self.client.close()

    def _report(self, outcome: str) -> None:
        if self.report_path:
            self.stats.write_report(self.report_path, dry_run=self.dry_run, outcome=outcome)
