"""Length limits for the strings clients send, and short quotes of them in messages and logs.

A client string is echoed in error messages (which travel back in gRPC trailers, whose size gRPC
caps) and in log lines, so an unbounded one turns a NOT_FOUND into RESOURCE_EXHAUSTED ("metadata
size exceeds hard limit") and lets a caller grow the server's logs at will. Every string field is
checked against its limit before it is used, and messages quote at most :data:`QUOTE_CHARS`.
"""

from __future__ import annotations

from .errors import InvalidRequestError

MAX_MODEL_NAME = 128  # model directory names
MAX_OUTPUT_FORMAT = 16  # "png", "jpeg", "webp", ...
MAX_REQUEST_ID = 128  # ids, in messages and in x-request-id metadata
MAX_VERSION_TEXT = 20  # KServe version strings (decimal)
QUOTE_CHARS = 40


def quote(value: str) -> str:
    """``repr`` of at most :data:`QUOTE_CHARS` characters of ``value`` (with an ellipsis and length)."""
    if len(value) <= QUOTE_CHARS:
        return repr(value)
    return f"{value[:QUOTE_CHARS]!r}... ({len(value)} characters)"


def check_text(field: str, value: str, limit: int) -> str:
    """Return ``value`` if it has at most ``limit`` characters.

    Raises:
        InvalidRequestError: it is longer (the message quotes a short prefix only).
    """
    if len(value) > limit:
        raise InvalidRequestError(
            f"{field} is {len(value)} characters long, over the limit of {limit}: {quote(value)}"
        )
    return value
