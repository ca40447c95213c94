"""Observers of a pass's outcomes: logs, journal, status, systemd and metrics."""
