"""Who writes: the writer identity stamped on every write (`kanade.writer`).

A watchdog recognises its own earlier writes by it, so an edited file at the
same `spec_version` is applied, while another writer's different content is a
conflict (README "Editing the file on one host", docs/CLUSTER.md).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import socket
from typing import Any

_WRITER = re.compile(r"[\x21-\x7e]{1,64}")


def writer(value: Any) -> str:
    if not isinstance(value, str) or not _WRITER.fullmatch(value):
        raise ValueError(
            "must be 1 to 64 printable ASCII characters without spaces (e.g. 'broker-2')"
        )
    return value


@functools.cache
def _host_identity() -> str:
    """This machine, stably: its machine id (hashed below, never shown), else
    its host name."""
    try:
        with open("/etc/machine-id", encoding="ascii") as fh:
            machine = fh.read(64).strip()
    except (OSError, ValueError):
        machine = ""
    return machine or socket.gethostname()


def writer_id(path: str) -> str:
    """The default writer identity: this host plus the config file's absolute
    path, hashed short. Stable across restarts, reloads and edits of that one
    file; different on another host or for another file."""
    seed = f"kanade-watchdog writer\0{_host_identity()}\0{os.path.abspath(path)}"
    return hashlib.sha256(seed.encode()).hexdigest()[:12]
