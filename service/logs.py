"""Structured logging for the server: request-id context, a one-object-per-line JSON formatter and
a text formatter whose lines no logged field can break (control characters are escaped).

The request id lives in a ``contextvars.ContextVar`` set by the servicer for the duration of a
request, so every log line written while handling it (pipeline, tiling, errors) carries it without
passing it around. :func:`configure_logging` is called by ``pixforge serve`` only; the library
never touches the root logger on import.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import time
from collections.abc import Iterator

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("pixforge_request_id", default="-")
method_var: contextvars.ContextVar[str] = contextvars.ContextVar("pixforge_method", default="-")

# Extra attributes a log call may pass (extra={...}) that the JSON formatter emits as fields.
EXTRA_FIELDS = (
    "model",
    "version",
    "code",
    "width",
    "height",
    "total_ms",
    "queue_ms",
    "inference_ms",
    "tiles",
    "peer",
    "provider",
)


@contextlib.contextmanager
def request_context(request_id: str, method: str | None = None) -> Iterator[None]:
    """Tag log lines written inside the block with ``request_id`` (and the RPC method)."""
    token = request_id_var.set(request_id)
    mtoken = method_var.set(method) if method else None
    try:
        yield
    finally:
        try:
            request_id_var.reset(token)
            if mtoken is not None:
                method_var.reset(mtoken)
        except ValueError:
            # A streaming handler whose client went away is closed by the event loop's async
            # generator finaliser, which runs in another Context than the one the tokens came
            # from. That Context is discarded with the task anyway: nothing to restore.
            pass


class ContextFilter(logging.Filter):
    """Copy the request id and method from the context into each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.method = method_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, method and extras."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
            "method": getattr(record, "method", "-"),
        }
        for key in EXTRA_FIELDS:
            if hasattr(record, key):
                data[key] = getattr(record, key)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
# Characters that would end, overwrite or disguise a text log line: C0 and C1 controls, DEL and the
# Unicode line/paragraph separators.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """``text`` with its control characters written as Python escapes (``\\n``, ``\\x1b``)."""
    return _CONTROL.sub(lambda m: ascii(m.group())[1:-1], text)


class TextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT` lines in which no logged field can start a new line.

    A client's text (an id, a model name, an error message quoting either) could otherwise forge
    log lines; request ids are refused unless printable, and this is the second line of defence.
    A traceback, appended after the line, keeps its own newlines.
    """

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))


def configure_logging(level: str = "INFO", fmt: str = "text", stream=None) -> None:
    """Install one handler on the ``pixforge`` logger (text or JSON lines) at ``level``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger = logging.getLogger("pixforge")
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
