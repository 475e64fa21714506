"""Log lines: which client request each is about, and their format (``KALTSTART_LOG_FORMAT``: text or json).

A handler's work for one HTTP request runs with ``REQUEST_ID`` set (``gateway.api.requestids``), so every line it
logs names the request without passing the id along; a line logged elsewhere about a request (a dispatcher's)
names it with ``extra={"request_id": ...}``. In text a line ends with ``request_id=<id>`` when it has one; in
json each line is one object with ``time``, ``level``, ``logger``, ``message``, ``request_id`` and any extras.
"""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar
from typing import Any, Literal

LogFormat = Literal["text", "json"]

#: The client request id (``X-Request-Id``) of the HTTP request being handled; None outside one.
REQUEST_ID: ContextVar[str | None] = ContextVar("kaltstart_request_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

#: Attributes every ``LogRecord`` has: anything else on a record came with ``extra`` and goes into a json line.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id", "taskName"}


class RequestIdFilter(logging.Filter):
    """Gives every record a ``request_id``: its own (``extra``), else the request being handled, else None."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class TextFormatter(logging.Formatter):
    """The classic line, with `` request_id=<id>`` at its end when the record is about a request."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{line} request_id={request_id}" if request_id else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601 with ms), level, logger, message, request_id, the record's
    extras, and the exception's traceback as ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            fields["request_id"] = request_id
        for name, value in vars(record).items():
            if name not in _STANDARD:
                fields[name] = value
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return json.dumps(fields, default=str, ensure_ascii=False)


def _iso(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


def handler(log_format: LogFormat, stream: Any = None) -> logging.Handler:
    """A stream handler (stderr by default) writing ``log_format`` lines that name their request."""
    out = logging.StreamHandler(stream)
    out.addFilter(RequestIdFilter())
    out.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter(TEXT_FORMAT))
    return out


def configure(level: str, log_format: LogFormat) -> None:
    """The process's logging: one handler on the root logger (replacing any), at ``level``."""
    logging.basicConfig(level=level, handlers=[handler(log_format)], force=True)
