"""Logging to stderr, as plain text or one JSON object per line (``--log-format json``).

Only the ``agent`` logger hierarchy gets a handler: modules log through
``logging.getLogger(__name__)``, and libraries keep Python's defaults (warnings and up
on stderr). Records still propagate to the root logger, which has no handler unless an
embedding program (or pytest's ``caplog``) adds one. Extra fields passed as
``logger.info(..., extra={"file": key})`` appear as keys of the JSON object, or as
``key=value`` after a text message.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Literal, TextIO

import orjson

from agent.redact import scrub, scrub_json

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

ROOT = "agent"
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD}


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """``2024-05-14T09:12:33.417Z INFO message key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.getMessage()}"
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{key}={value}" for key, value in extras.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return scrub(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # One pass over the serialised line: every form of a secret that text can hold
        # appears there JSON-escaped, in whichever field (values of other types via str()).
        return scrub_json(orjson.dumps(entry, default=str).decode())


def setup_logging(
    log_format: LogFormat = "text",
    *,
    level: int = logging.INFO,
    stream: TextIO | None = None,
) -> logging.Logger:
    """Send the ``agent`` loggers to ``stream`` (default: the current ``sys.stderr``).

    Calling it again replaces the handler, so a process (or a test) may switch formats.
    """
    logger = logging.getLogger(ROOT)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    return logger
