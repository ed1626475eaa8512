"""Entry point: `target-braze` and `python -m target_braze`."""

from __future__ import annotations

import sys

from target_braze.errors import TargetBrazeError
from target_braze.target import TargetBraze


def main() -> None:
    """Run the target; a `TargetBrazeError` becomes one line on stderr and exit code 1."""
    try:
        TargetBraze.cli()
    except TargetBrazeError as exc:
        sys.stderr.write(f"target-braze: error: {exc}\n")
        sys.stderr.flush()
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
