"""What the daemon tells its reporters, as data.

Pure. The daemon's supervisor, its connection and its worker produce these;
the reporters (`report.outcomes`, `report.status`, `report.systemd`,
`report.metrics`) consume them through `ports.Reporter`.
"""

from __future__ import annotations

from enum import StrEnum


class RunState(StrEnum):
    """Where the daemon is in its life."""

    STARTING = "starting"  # tasks being started
    RUNNING = "running"
    RELOADING = "reloading"  # a SIGHUP's file being read and applied
    STOPPING = "stopping"
