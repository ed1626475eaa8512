"""Console entry point: user errors become one line on stderr and exit status 1."""

from __future__ import annotations

import sys

from tap_peak_attributes.errors import TapPeakError
from tap_peak_attributes.tap import TapPeakAttributes


def main() -> None:
    """Run the tap's CLI; a `TapPeakError` prints `tap-peak-attributes: error: ...`."""
    try:
        TapPeakAttributes.cli()
    except TapPeakError as exc:
        print(f"tap-peak-attributes: error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
