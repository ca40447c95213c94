"""Log output: readable lines on a terminal, JSON for shippers, journal under systemd.

Events carry structured fields through `extra=fields(...)`; each handler
renders them its own way: the text line is the message alone (it already
names the resource and the trigger), JSON gets them as keys, the journal as
KANADE_* fields with the event's MESSAGE_ID (`journal`). Every module logs
through the standard `logging` package.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from kanade_watchdog.model.printable import escape
from kanade_watchdog.report.journal import journal_handler, message_id

FIELDS_ATTR = "kanade"


def fields(**values: Any) -> dict[str, Any]:
    """`log.info(..., extra=fields(resource=..., action=...))`."""
    return {FIELDS_ATTR: {k: v for k, v in values.items() if v is not None and v != ""}}


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    value = getattr(record, FIELDS_ATTR, None)
    return dict(value) if isinstance(value, dict) else {}


class TextFormatter(logging.Formatter):
    """One record, one line: the message carries names and metadata read from
    the broker, and a newline in them must not forge a line of its own."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        return f"{stamp} {record.levelname:<7} {escape(record.getMessage())}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        values = record_fields(record)
        if "message_id" in values:  # the same fixed ID the journal gets
            values["message_id"] = message_id(values["message_id"]) or str(values["message_id"])
        doc.update(values)
        if record.exc_info and record.exc_info[1] is not None:  # still one line: a JSON string
            doc["traceback"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def _text_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter())
    return handler


def setup_logging(fmt: str, level: str) -> None:
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler: logging.Handler
    if fmt in ("auto", "journal"):
        handler = (
            journal_handler(fields_of=record_fields, force=fmt == "journal") or _text_handler()
        )
    elif fmt == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    else:
        handler = _text_handler()
    root.addHandler(handler)
    root.setLevel(level.upper())
    # nats-py logs its own reconnect chatter at ERROR; our callbacks say it once.
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("tzlocal").setLevel(logging.WARNING)
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _AsyncioNoise) for f in asyncio_log.filters):
        asyncio_log.addFilter(_AsyncioNoise())


class _AsyncioNoise(logging.Filter):
    """asyncio warns on every TLS connection nats-py closes; it means nothing
    to an operator and is not ours to fix."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received() has no effect when using ssl" not in record.getMessage()
