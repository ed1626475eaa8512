"""Entry point: `target-braze` and `python -m target_braze`."""

from __future__ import annotations

import logging
import sys

from target_braze.errors import TargetBrazeError
from target_braze.target import TargetBraze

logger = logging.getLogger("target_braze")


def main() -> None:
    """Run the target; any failure ends with one `target-braze: error:` line and exit 1.

    A `TargetBrazeError` names the setting, record, line or Braze status at fault. Anything
    else is a bug of ours: its traceback goes to the debug log (TARGET_BRAZE_LOGLEVEL=DEBUG)
    and the user still gets one line.
    """
    try:
        TargetBraze.cli()
    except TargetBrazeError as exc:
        _fail(str(exc))
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as exc:
        logger.debug("Unexpected error", exc_info=True)
        _fail(
            f"unexpected {type(exc).__name__}: {exc} (a bug in target-braze: run with "
            "TARGET_BRAZE_LOGLEVEL=DEBUG for the traceback and report it)"
        )


def _fail(message: str) -> None:
    sys.stderr.write(f"target-braze: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(1) from None


if __name__ == "__main__":
    main()
