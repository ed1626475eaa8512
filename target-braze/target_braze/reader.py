"""`SingerReader`: Singer messages from stdin, decoded by msgspec with floats as floats.

singer-sdk's readers turn every JSON float into `Decimal` (for exactness in SQL targets);
Braze receives JSON numbers anyway, so the decimal round trip only costs time. Lines are
read as bytes, which spares a UTF-8 decode before parsing.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

import msgspec
from singer_sdk.singerlib.encoding.base import GenericSingerReader
from singer_sdk.singerlib.exceptions import InvalidInputLine

logger = logging.getLogger("target_braze")
_decoder = msgspec.json.Decoder()


class SingerReader(GenericSingerReader[Any]):
    """Reads bytes (stdin) or text (`--input FILE`) lines."""

    @property
    def default_input(self) -> IO[Any]:
        """Standard input, as bytes where it can be."""
        return getattr(sys.stdin, "buffer", sys.stdin)

    def deserialize_json(self, line: Any) -> dict:
        """Parse one line; a malformed line ends the run with the line's beginning."""
        try:
            message = _decoder.decode(line)
        except msgspec.DecodeError as exc:
            text = line.decode(errors="replace") if isinstance(line, bytes) else line
            raise InvalidInputLine(f"Unable to parse line as JSON: {text[:200]!r}") from exc
        if not isinstance(message, dict):
            raise InvalidInputLine(f"A Singer message must be a JSON object: {str(line)[:200]}")
        return message
