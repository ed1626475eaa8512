"""`Run`: one run's delivery machinery, assembled from the settings, and how it ends.

The target owns one `Run`; every stream shares it, so the rate limit, the in-flight user
rule, the ledger and the checkpoint hold across streams.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from target_braze.checkpoint import Checkpoint, StateOutput
from target_braze.client import (
    BrazeClient,
    DryRunClient,
    RateLimiter,
    RetryPolicy,
    Sends,
    resolve_rest_endpoint,
)
from target_braze.errors import ConfigError, RejectedRatioExceeded, TargetBrazeError
from target_braze.ledger_store.transport import secure_postgres_url
from target_braze.pack import RequestLimits
from target_braze.private_files import check_output_path
from target_braze.report import RunStats
from target_braze.send import Delivery, UsersTrackSender
from target_braze.settings import check_setting_values, resolve_api_key
from target_braze.settle import RejectedRecords, Settlement
from target_braze.user_data import UserData, delete_guards

if TYPE_CHECKING:
    from target_braze.ledger import Ledger

logger = logging.getLogger("target_braze")


class Run:
    """Stats, rejects, checkpoint, STATE output, settlement, client, sender and delivery."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        """Check the delivery settings and build the pieces (no network yet).

        `config` holds every setting, defaults included (see `settings.apply_defaults`).
        """
        check_setting_values(config)
        self.dry_run = bool(config["dry_run"])
        self.run_id = uuid.uuid4().hex[:12]
        self.max_rejected_ratio = float(config["max_rejected_ratio"])
        if not 0.0 <= self.max_rejected_ratio <= 1.0:
            raise ConfigError("max_rejected_ratio must be between 0 and 1, e.g. 0.05 for 5%")
        delete_guards(config)  # checked before the ledger or any output is opened
        for name in ("max_objects_per_request", "max_concurrent_requests", "max_request_bytes"):
            if int(config[name]) < 1:
                raise ConfigError(f"{name} must be at least 1")
        self.limits = RequestLimits(
            max_objects=int(config["max_objects_per_request"]),
            max_bytes=int(config["max_request_bytes"]),
            per_array=bool(config["legacy_per_array_limits"]),
        )
        self.flush_interval = float(config["flush_interval_seconds"])
        self.report_path: str | None = config.get("run_report_path")
        # Refused before any work: a link or another user's file is never written through.
        for setting in ("run_report_path", "rejected_records_path"):
            if config.get(setting):
                check_output_path(config[setting], setting)
        if self.dry_run:
            check_output_path(config["dry_run_path"], "dry_run_path")
        self.checkpoint = Checkpoint()
        self.stats = RunStats(
            float(config["progress_interval_seconds"]),
            records_in=lambda: self.checkpoint.received,
            run_id=self.run_id,
            dry_run=self.dry_run,
        )
        self.rejects = RejectedRecords(config.get("rejected_records_path"), self.stats, self.run_id)
        self.stop = threading.Event()
        self.limiter: RateLimiter | None = None
        self.client = self._client(config)
        self.ledger = self._ledger(config)
        self.settlement = Settlement(self.checkpoint, self.rejects, self.stats, self.ledger)
        self.sender = UsersTrackSender(
            self.client,
            self.settlement,
            self.stats,
            int(config["max_concurrent_requests"]),
            self.stop,
            self.limiter.in_flight_needed if self.limiter is not None else None,
        )
        self.delivery = Delivery(self.limits, self.sender, self.settlement, self.stats, self.ledger)
        self.user_data = UserData(
            config,
            base_url=resolve_rest_endpoint(config["rest_endpoint"]),
            api_key=None if self.dry_run else resolve_api_key(config),
            dry_run_client=self.client if self.dry_run else None,
            settlement=self.settlement,
            stats=self.stats,
            stop=self.stop,
            delivery=self.delivery,
            track_sender=self.sender,
            track_limits=self.limits,
            records_in=lambda: self.checkpoint.received,
        )
        self.state_output = StateOutput(
            self.checkpoint.released,
            self._ratio_allows_release,
            write=not self.dry_run,
            on_written=lambda: self.stats.add(states_emitted=1),
        )
        self._finished = False

    def _client(self, config: Mapping[str, Any]) -> Sends:
        # A dry run checks every setting a real run needs, except the key.
        if not config.get("rest_endpoint"):
            raise ConfigError(
                "rest_endpoint is not set: give your Braze instance (e.g. US-03, EU-01) or "
                "its REST URL (TARGET_BRAZE_REST_ENDPOINT)"
            )
        endpoint = resolve_rest_endpoint(config["rest_endpoint"])
        _warn_beyond_brazes_limits(config)
        if self.dry_run:
            logger.info(
                "Dry run: request bodies go to %s; nothing is sent and no STATE is emitted",
                config["dry_run_path"],
            )
            return DryRunClient(config["dry_run_path"], self.stats)
        api_key = resolve_api_key(config)
        if not api_key:
            raise ConfigError(
                f"no Braze API key: export {config['api_key_env']} (read at run time, never "
                "written to disk) or set api_key, with a REST API key that has the users.track "
                "permission; or set dry_run: true"
            )
        limiter = self.limiter = RateLimiter(
            int(config["max_requests_per_window"]),
            float(config["rate_limit_window_seconds"]),
            margin_seconds=float(config["rate_limit_margin_seconds"]),
            per_hour=int(config["max_requests_per_hour"]),
        )
        return BrazeClient(
            endpoint,
            api_key,
            limiter,
            self.stats,
            timeout=float(config["request_timeout_seconds"]),
            retry=RetryPolicy(
                max_retries=int(config["max_retries"]),
                base_seconds=float(config["retry_backoff_seconds"]),
            ),
            bulk_header=bool(config["bulk_header"]),
            stop=self.stop,
            max_connections=int(config["max_concurrent_requests"]),
        )

    def _ledger(self, config: Mapping[str, Any]) -> Ledger | None:
        if not (config["send_only_changes"] or config["deduplicate_events"]):
            return None
        endpoint = (
            resolve_rest_endpoint(config["rest_endpoint"]) if config.get("rest_endpoint") else None
        )
        api_key = resolve_api_key(config)
        if self.dry_run and not config.get("ledger_workspace") and not (endpoint and api_key):
            logger.warning(
                "Dry run without api_key and rest_endpoint (or ledger_workspace): the ledger "
                "cannot tell which workspace to read, so this dry run reports every object "
                "as to be sent"
            )
            return None
        # Imported here: a run with the ledger off does not load it (or SQLite, or xxhash).
        from target_braze.ledger import Ledger  # noqa: PLC0415

        if config.get("ledger_url"):
            allow = bool(config["allow_insecure_postgres"])
            secured = secure_postgres_url(config["ledger_url"], allow_insecure=allow)
            config = {**config, "ledger_url": secured}
        return Ledger(config, endpoint, api_key, dry_run=self.dry_run)

    def _ratio_allows_release(self) -> bool:
        # While too many records are rejected, STATE stays put: fixing the cause (a wrong
        # identifier_property, say) and rerunning then resends the affected records.
        return self.stats.rejected_ratio() <= self.max_rejected_ratio

    def raise_if_failed(self) -> None:
        """Re-raise, in the calling thread, the error that failed the run."""
        self.sender.raise_if_failed()
        self.user_data.raise_if_failed()
        if self.ledger is not None and self.ledger.failure is not None:
            raise self.ledger.failure
        failure = self.state_output.failure
        if failure is not None:
            raise TargetBrazeError(f"cannot write STATE to standard output: {failure}")

    def finish(self) -> None:
        """End of input: send the rest, wait for Braze, check the ratio, summarise, report."""
        if self._finished:
            return
        self.delivery.drain()
        self.user_data.finish(dry_run=self.dry_run)
        self._finished = True
        if self.ledger is not None:
            self.ledger.close()  # its writer settles the last confirmations
        self.sender.shutdown()
        self.user_data.shutdown()
        self.state_output.close()
        self._close_outputs()
        self.raise_if_failed()
        ratio = self.stats.rejected_ratio()
        outcome = "success"
        if self.stats.counts["rejected"]:
            outcome = "partial_success" if ratio <= self.max_rejected_ratio else "failed"
        elif self.stats.counts["unknown"]:
            outcome = "partial_success"
        logger.info(
            "Run %s summary (%s): %s%s",
            self.run_id,
            outcome,
            self.stats.summary(),
            self.user_data.summary(),
        )
        if note := self.stats.ceiling_note():
            logger.warning("%s", note)
        if self.stats.rejected_by_reason:
            logger.warning("Rejected records by reason: %s", self.stats.rejection_summary())
        self._warn_unknown()
        self._report(outcome)
        if outcome == "failed":
            raise RejectedRatioExceeded(
                f"{self.stats.counts['rejected']} of {self.checkpoint.received} records "
                f"({ratio:.1%}) were rejected, above max_rejected_ratio "
                f"{self.max_rejected_ratio:.1%}; see the rejects output for reasons. STATE was "
                "held back, so a rerun after the fix resends them"
            )

    def fail(self, outcome: str = "failed") -> None:
        """The run is ending early: stop the senders, keep what was confirmed, report it."""
        if self._finished:
            return
        self._finished = True
        self.stop.set()
        self.sender.shutdown()
        self.user_data.shutdown()
        self.delivery.abandon()
        if self.ledger is not None:
            self.ledger.close()  # what Braze confirmed is recorded, and settles
        # States already released stay valid (their records are settled); the guard decides.
        self.state_output.close()
        self._close_outputs()
        log = logger.warning if outcome == "interrupted" else logger.error
        log("Run %s %s: %s%s", self.run_id, outcome, self.stats.summary(), self.user_data.summary())
        self._warn_unknown()
        if note := self.stats.ceiling_note():
            logger.warning("%s", note)
        self._report(outcome)

    def _warn_unknown(self) -> None:
        """One line on events and purchases of unknown delivery, and how to review them."""
        unknown = self.stats.counts["unknown"]
        if not unknown:
            return
        if self.ledger is not None and self.ledger.deduplicate_events:
            review = (
                "list them with `target-braze-ledger unknown`, check Braze, then "
                "`target-braze-ledger release` those Braze lacks (their next emission is sent)"
            )
        else:
            review = (
                "they are in the rejects output (DELIVERY_UNKNOWN): check Braze and re-emit "
                "those it lacks"
            )
        logger.warning(
            "%d events/purchases are of unknown delivery: Braze may hold them, so they were "
            "not resent; %s",
            unknown,
            review,
        )

    def _close_outputs(self) -> None:
        self.rejects.close()
        self.client.close()

    def _report(self, outcome: str) -> None:
        if self.report_path:
            self.stats.write_report(
                self.report_path, outcome=outcome, endpoints=self.user_data.figures()
            )


# Braze's documented maxima (braze-users-track.md): larger settings only earn 400s and 413s.
BRAZE_MAX_OBJECTS_PER_REQUEST = 75
BRAZE_MAX_REQUEST_BYTES = 4_000_000


def _warn_beyond_brazes_limits(config: Mapping[str, Any]) -> None:
    objects = int(config["max_objects_per_request"])
    if objects > BRAZE_MAX_OBJECTS_PER_REQUEST:
        logger.warning(
            "max_objects_per_request %d is above Braze's documented limit of %d objects per "
            "request%s: expect every request to be refused with 400 and split",
            objects,
            BRAZE_MAX_OBJECTS_PER_REQUEST,
            " per array" if config["legacy_per_array_limits"] else " (all arrays combined)",
        )
    size = int(config["max_request_bytes"])
    if size > BRAZE_MAX_REQUEST_BYTES:
        logger.warning(
            "max_request_bytes %d is above Braze's documented limit of 4 MB per request "
            "body: expect 413s and splits",
            size,
        )
