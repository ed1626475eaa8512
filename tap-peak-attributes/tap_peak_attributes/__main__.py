"""Console entry point: every ending is one line on stderr and a meaningful exit status."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback

from singer_sdk.exceptions import MappingError

from tap_peak_attributes.errors import TapPeakError, TapStopped
from tap_peak_attributes.output import OutputClosed, flush_all
from tap_peak_attributes.tap import TapPeakAttributes

PREFIX = "tap-peak-attributes"


def main() -> None:
    """Run the tap's CLI.

    - A `TapPeakError` prints `tap-peak-attributes: error: ...` and exits 1, after the
      records already buffered are written (never lose a line).
    - SIGTERM/SIGINT (`TapStopped`): the buffered lines and the STATE covering them are
      written, then one line; exit status 128 + the signal number.
    """
    try:
        TapPeakAttributes.cli()
    except SystemExit:
        # click ends every run this way, success included.
        try:
            flush_all()
        except OutputClosed as exc:
            _fail(exc)
        raise
    except TapStopped as stopped:
        _finish_stop(stopped)
    except TapPeakError as exc:
        _flush_quietly()
        _fail(exc)
    except MappingError as exc:
        # A stream map expression that fails on a record (it parsed at start-up).
        _flush_quietly()
        _fail(exc, f"stream_maps: {_first_line(exc)}")
    except BaseException:
        _flush_quietly()
        raise


def _flush_quietly() -> None:
    """Write the buffered records on the way out of a failure; the failure is reported."""
    with contextlib.suppress(OutputClosed, TapStopped):
        flush_all()


def _finish_stop(stopped: TapStopped) -> None:
    try:
        stopped.finish()
    except OutputClosed as exc:
        _fail(exc)
    except TapStopped as again:
        print(
            f"{PREFIX}: error: stopped by a second {again.signal_name} while writing the "
            "last lines; rerun to resume from the last STATE the target stored",
            file=sys.stderr,
        )
        sys.exit(128 + again.signum)
    print(
        f"{PREFIX}: stopped by {stopped.signal_name}; the last STATE written covers every "
        "record written before it",
        file=sys.stderr,
    )
    sys.exit(128 + stopped.signum)


def _fail(exc: BaseException, text: str | None = None) -> None:
    """One line and exit 1; the traceback too, but only at log level debug."""
    line = f"{PREFIX}: error: {text or exc}"
    if os.environ.get("SINGER_SDK_LOG_CONFIG"):
        # Under Meltano, which configures singer-sdk's logging: through the logger, the line
        # keeps its level (structured logging), so the reason a run failed is an error;
        # Meltano's --log-level debug shows the traceback.
        log = logging.getLogger("tap_peak_attributes")
        # The traceback in the message itself: Meltano's console shows a plugin's message,
        # not the frames of its structured exception.
        log.debug("%s", "".join(traceback.format_exception(exc)).rstrip())
        log.error("%s", line)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.exit(1)
    if _debug():
        traceback.print_exception(exc, file=sys.stderr)
    print(line, file=sys.stderr)
    sys.exit(1)


def _debug() -> bool:
    # singer-sdk's own log level settings: TAP_PEAK_ATTRIBUTES_LOGLEVEL, then LOGLEVEL.
    level = os.environ.get("TAP_PEAK_ATTRIBUTES_LOGLEVEL") or os.environ.get("LOGLEVEL") or ""
    return level.strip().upper() == "DEBUG"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


if __name__ == "__main__":
    main()
