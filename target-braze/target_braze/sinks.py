"""`BrazeSink`: one stream's records mapped, validated and handed to the shared `Delivery`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from singer_sdk.sinks import Sink

from target_braze.mapping import Rejection, StreamMapping

if TYPE_CHECKING:
    from target_braze.target import TargetBraze


class BrazeSink(Sink):
    """Maps and validates one stream's records and hands them to the shared `Delivery`.

    Requests are built across streams in arrival order (`Delivery.add`), so two streams
    updating one user reach Braze in the order the tap sent them. The SDK's drain
    (`process_batch`, on `batch_size_rows`, end of input or SIGTERM) sends the partly
    filled request and waits until Braze answered everything in flight.
    """

    MAX_SIZE_DEFAULT = 10_000

    def __init__(
        self,
        target: TargetBraze,
        stream_name: str,
        schema: dict,
        key_properties: list[str] | None,
    ) -> None:
        """Resolve the stream's mapping from the settings and its schema."""
        super().__init__(target, stream_name, schema, key_properties)
        self.delivery = target.delivery
        self.mapping = StreamMapping(
            stream_name, schema, dict(self.config), target.bookmark_properties.get(stream_name)
        )
        # Records of this stream bypass the SDK's record path (see TargetBraze).
        self.direct = target.direct_path_allowed()
        if self.direct:
            target.direct_sinks[stream_name] = self

    # Validation (validate_records) happens in StreamMapping.build, in the same pass that
    # builds the Braze object; an invalid record is rejected with a reason instead of
    # ending the run.
    def get_validator(self) -> None:
        """No separate validator: see `StreamMapping.build`."""
        return

    # Date-times stay strings: StreamMapping normalises the ones Braze will receive, which
    # is cheaper than the SDK's parse of every date-time into a datetime and back.
    def _parse_timestamps_in_record(self, record: dict, schema: dict, treatment: Any) -> None:
        return

    # A record without its key property is rejected with a reason by StreamMapping; the
    # SDK's own check would end the run with a traceback instead.
    def _singer_validate_message(self, record: dict) -> None:
        return

    def process_record(self, record: dict, context: dict) -> None:
        """Map, validate and batch one record; send the batch when full."""
        delivery = self.delivery
        seq = delivery.checkpoint.register_record()
        built = self.mapping.build(record, seq)
        if isinstance(built, Rejection):
            delivery.rejects.write(built.stream, built.identifier, built.record, built.reason)
            delivery.checkpoint.settle([seq])
            return
        delivery.add(built)
        delivery.stats.maybe_log_progress()

    def process_batch(self, context: dict) -> None:
        """Drain: send what is buffered and wait for Braze's answers to everything."""
        self.delivery.flush()
        self.delivery.sender.wait_all()
        if self.direct:
            # The direct record path skips the SDK's per-record metric: count them here.
            self.record_counter_metric.increment(self.current_size)
