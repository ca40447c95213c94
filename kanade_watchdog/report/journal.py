"""Native journal logging when stderr is connected to journald.

systemd sets JOURNAL_STREAM=<dev>:<inode> for a service whose stderr goes to
the journal; comparing it with fd 2 is the documented way to decide.

`JournalHandler` turns one log record into one journal entry with fields an
operator can filter on: PRIORITY from the level, SYSLOG_IDENTIFIER, the
fixed MESSAGE_ID of the event (`events.MESSAGE_IDS`) and the event's
structured fields as KANADE_RESOURCE, KANADE_ACTION, ... Nothing else from
the record goes in (systemd-python's own handler copies every record
attribute). `logs` builds it and hands it the way to read a record's fields;
the sender is injectable so tests see the exact entry.

sd_journal_sendv drops every entry without a word when journald's socket is
missing (a container, a chroot, `--log-format journal` on a machine without
systemd), so the journal is only chosen when that socket is there.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from kanade_watchdog.model.events import MESSAGE_IDS

try:  # systemd-python is a Linux-only dependency
    from systemd import _journal as _native  # the C sender behind journal.sendv
    from systemd import journal as _journal
except ImportError:  # pragma: no cover - exercised only off Linux
    _journal = None
    _native = None

IDENTIFIER = "kanade-watchdog"
SOCKET = "/run/systemd/journal/socket"  # where sd_journal_sendv sends, fixed by systemd

# Structured field (logs.fields key) -> journal field. Documented in docs/SYSTEMD.md.
FIELD_NAMES: dict[str, str] = {
    "resource": "KANADE_RESOURCE",
    "stream": "KANADE_STREAM",
    "kind": "KANADE_KIND",
    "action": "KANADE_ACTION",
    "trigger": "KANADE_TRIGGER",
    "diff": "KANADE_DIFF",
    "error": "KANADE_ERROR",
}

_UUID128 = re.compile(r"[0-9a-f]{32}")
_IDS_BY_EVENT: dict[str, str] = {str(event): mid for event, mid in MESSAGE_IDS.items()}

Sender = Callable[[list[str]], None]  # one entry as "FIELD=value" strings
FieldsOf = Callable[[logging.LogRecord], Mapping[str, Any]]


def priority(levelno: int) -> int:
    """syslog priority (journal PRIORITY=) of a logging level."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def message_id(value: Any) -> str | None:
    """The fixed 128-bit ID for an event (or an ID given as such), else None."""
    if not isinstance(value, str):
        return None
    if value in _IDS_BY_EVENT:
        return _IDS_BY_EVENT[value]
    return value if _UUID128.fullmatch(value) else None


def _sendv(entry: list[str]) -> None:
    if _journal is not None:
        _journal.sendv(*entry)


class JournalHandler(logging.Handler):
    def __init__(
        self,
        *,
        fields_of: FieldsOf,
        send: Sender = _sendv,
        identifier: str = IDENTIFIER,
        level: int = logging.NOTSET,
    ) -> None:
        super().__init__(level)
        self._fields_of = fields_of
        self._send = send
        self._identifier = identifier

    def entry(self, record: logging.LogRecord) -> dict[str, str]:
        """The journal fields of one record, in the order they are sent."""
        out = {
            "MESSAGE": record.getMessage(),
            "PRIORITY": str(priority(record.levelno)),
            "SYSLOG_IDENTIFIER": self._identifier,
        }
        values = self._fields_of(record)
        mid = message_id(values.get("message_id"))
        if mid is not None:
            out["MESSAGE_ID"] = mid
        for key, name in FIELD_NAMES.items():
            value = values.get(key)
            if value is not None and value != "":
                out[name] = str(value)
        out["LOGGER"] = record.name
        out["CODE_FILE"] = record.pathname
        out["CODE_LINE"] = str(record.lineno)
        out["CODE_FUNC"] = record.funcName
        if record.exc_info and record.exc_info[1] is not None:
            # Kept out of MESSAGE (operators read one line); `-o verbose` shows it.
            out["TRACEBACK"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return out

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._send([f"{k}={v}" for k, v in self.entry(record).items()])
        except Exception:
            self.handleError(record)


def available() -> bool:
    """Whether systemd-python (the journal client) is installed."""
    return _journal is not None


def stderr_is_journal() -> bool:
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not dev or not ino:
        return False
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return f"{st.st_dev}:{st.st_ino}" == value


def unreachable() -> str | None:
    """Why entries sent to the journal would be lost, or None. A sender put in
    place of systemd-python's own (a capture) is taken at its word."""
    if _journal is None:
        return "systemd-python is not installed"
    if _native is not None and _journal.sendv is not _native.sendv:
        return None
    if not os.path.exists(SOCKET):
        return f"no journal socket at {SOCKET}"
    return None


def journal_handler(*, fields_of: FieldsOf, force: bool = False) -> logging.Handler | None:
    """The native handler when stderr is the journal (or `force`) and the
    journal can be reached, else None (the caller logs text lines). Asked for
    explicitly (`force`) but unreachable, it says so once on stderr."""
    if not force and not stderr_is_journal():
        return None
    reason = unreachable()
    if reason is not None:
        if force:
            print(
                f"kanade-watchdog: --log-format journal: {reason}; logging text lines to "
                "stderr instead",
                file=sys.stderr,
            )
        return None
    return JournalHandler(fields_of=fields_of)
