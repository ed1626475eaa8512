"""Console entry point: every ending is one line on stderr and a meaningful exit status."""

from __future__ import annotations

import contextlib
import sys

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


def _fail(exc: BaseException) -> None:
    print(f"{PREFIX}: error: {exc}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    main()
