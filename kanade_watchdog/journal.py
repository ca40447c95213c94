"""Native journal logging when stderr is connected to journald.

systemd sets JOURNAL_STREAM=<dev>:<inode> for a service whose stderr goes to
the journal; comparing it with fd 2 is the documented way to decide.
"""

from __future__ import annotations

import logging
import os

try:  # systemd-python is a Linux-only dependency
    from systemd import journal as _journal
except ImportError:  # pragma: no cover - exercised only off Linux
    _journal = None


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


def journal_handler(*, force: bool = False) -> logging.Handler | None:
    if not force and not stderr_is_journal():
        return None
    if _journal is None:
        return None
    handler: logging.Handler = _journal.JournalHandler(SYSLOG_IDENTIFIER="kanade-watchdog")
    return handler
