"""TargetBraze: a Singer target for Braze's bulk /users/track, checkpointing on confirmation."""

from __future__ import annotations

import typing as t
from types import FrameType

from singer_sdk.target_base import Target

from target_braze.delivery import Delivery
from target_braze.errors import TargetBrazeError
from target_braze.reader import SingerReader
from target_braze.settings import CONFIG_SCHEMA
from target_braze.sinks import BrazeSink


class TerminationRequested(BaseException):
    """SIGTERM or SIGINT arrived: unwind, then drain (see `TargetBraze._handle_termination`)."""

    def __init__(self, signum: int) -> None:
        """Remember the signal."""
        super().__init__(signum)
        self.signum = signum


class TargetBraze(Target):
    """Upserts Singer records into Braze; emits each STATE once Braze confirmed what precedes it.

    Stock singer-sdk writes STATE only when it drains (end of input, every 5 minutes, on
    SIGTERM). Here every STATE goes to a `Checkpoint` instead and is written as soon as
    every record received before it was accepted by Braze or written to the rejects
    output, and never earlier.
    """

    name = "target-braze"
    config_jsonschema = CONFIG_SCHEMA
    default_sink_class = BrazeSink
    message_reader_class = SingerReader
    _active: t.ClassVar[TargetBraze | None] = None

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        """Build the delivery machinery; bad settings fail here, before any input is read."""
        super().__init__(*args, **kwargs)
        # Sinks drain one after another: concurrency lives in the shared sender, where the
        # rate limit and the one-request-per-user rule can see every request.
        self.max_parallelism = 1
        self.bookmark_properties: dict[str, list[str]] = {}
        self.direct_sinks: dict[str, BrazeSink] = {}
        self.delivery = Delivery(self.config)
        TargetBraze._active = self

    @classmethod
    def invoke(  # type: ignore[override]
        cls,
        *,
        about: bool = False,
        about_format: str | None = None,
        config: t.Any = None,
        file_input: t.IO[str] | None = None,
    ) -> None:
        """Run; on failure stop the senders and write the failure report before raising."""
        try:
            super().invoke(
                about=about, about_format=about_format, config=config, file_input=file_input
            )
        except TerminationRequested as exc:
            target = cls._active
            if target is None:
                raise SystemExit(128 + exc.signum) from None
            target.logger.info(
                "Received signal %d: sending what is buffered and waiting for Braze; STATE "
                "follows what Braze confirms",
                exc.signum,
            )
            try:
                target.drain_all(is_endofpipe=True)
            finally:
                target.delivery.fail("interrupted")
            raise SystemExit(128 + exc.signum) from None
        except BaseException:
            if cls._active is not None:
                cls._active.delivery.fail()
            raise

    def _handle_termination(self, signum: int, frame: FrameType | None) -> None:
        # The SDK drains inside the signal handler, which could wait forever for a lock
        # the interrupted main thread holds (a sender thread settling records needs the
        # checkpoint's lock). Unwind the main thread first; `invoke` then drains.
        raise TerminationRequested(signum)

    def _process_schema_message(self, message_dict: dict) -> None:
        # The replication key is excluded from attributes by default: remember it before
        # the SDK creates the stream's sink.
        bookmarks = message_dict.get("bookmark_properties")
        if bookmarks:
            self.bookmark_properties[message_dict["stream"]] = list(bookmarks)
        super()._process_schema_message(message_dict)

    def _process_record_message(self, message_dict: dict) -> None:
        # Without stream maps, flattening or record metadata the SDK's per-record work
        # (copy, identity transform, metadata strip, per-record metrics) changes nothing
        # and costs more than building the Braze object: hand the record straight over.
        sink = self.direct_sinks.get(message_dict.get("stream", ""))
        if sink is None or "record" not in message_dict:
            super()._process_record_message(message_dict)
        else:
            sink.tally_record_read()
            sink.process_record(message_dict["record"], {})
            if sink.is_full:
                self.drain_one(sink)
        self.delivery.sender.raise_if_failed()

    def direct_path_allowed(self) -> bool:
        """Whether records may bypass the SDK's record path (see `_process_record_message`)."""
        config = self.config
        return not (
            config.get("stream_maps")
            or config.get("flattening_enabled")
            or config.get("add_record_metadata")
        )

    def _process_state_message(self, message_dict: dict) -> None:
        self._assert_line_requires(message_dict, requires={"value"})
        self.delivery.checkpoint.add_state(message_dict["value"])
        # A STATE should not wait long for a request to fill up.
        self.delivery.flush_if_older_than(self.delivery.flush_interval)

    def _write_state_message(self, state: dict) -> None:
        """The SDK calls this after each drain; the `Checkpoint` already emitted what it may."""

    def process_endofpipe(self) -> None:
        """Drain everything, then summarise; fails if too many records were rejected."""
        super().process_endofpipe()
        self.delivery.finish()


__all__ = ["TargetBraze", "TargetBrazeError"]
