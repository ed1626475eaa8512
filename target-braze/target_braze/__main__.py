"""Entry point: `target-braze` and `python -m target_braze`."""

from __future__ import annotations

import logging
import os
import sys
import traceback

from target_braze.errors import TargetBrazeError
from target_braze.target import TargetBraze

logger = logging.getLogger("target_braze")


def main() -> None:
    """Run the target; any failure ends with one `target-braze: error:` line and exit 1.

    A `TargetBrazeError` names the setting, record, line or Braze status at fault. Anything
    else is a bug of ours: its traceback goes to the debug log (`meltano --log-level debug`,
    or TARGET_BRAZE_LOGLEVEL=DEBUG outside Meltano) and the user still gets one line.
    """
    try:
        TargetBraze.cli()
    except TargetBrazeError as exc:
        _fail(str(exc))
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as exc:
        # The traceback in the message itself: Meltano's console shows a plugin's message,
        # not the frames of its structured exception.
        logger.debug("Unexpected error: %s", "".join(traceback.format_exception(exc)).rstrip())
        _fail(
            f"unexpected {type(exc).__name__}: {exc} (a bug in target-braze: rerun with "
            "`meltano --log-level debug`, or TARGET_BRAZE_LOGLEVEL=DEBUG outside Meltano, for "
            "the traceback, and report it)"
        )


def _fail(message: str) -> None:
    line = f"target-braze: error: {message}"
    if os.environ.get("SINGER_SDK_LOG_CONFIG"):
        # Under Meltano, which configures singer-sdk's logging: through the logger, the line
        # keeps its level (structured logging), so the reason a run failed is an error.
        logger.error("%s", line)
        for handler in logging.getLogger().handlers:
            handler.flush()
    else:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    raise SystemExit(1) from None


if __name__ == "__main__":
    main()
