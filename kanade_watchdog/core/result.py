"""What happened to a resource, as one word: logged, shown and counted.

Apart from `outcome` (the dataclass that carries it with the decision) so
that `plan`, which renders decisions and no outcomes, does not build that
dataclass at start-up (tests/test_cli_imports.py).
"""

from __future__ import annotations

from enum import StrEnum


class Result(StrEnum):
    """What happened to a resource, as logged and shown (KANADE_ACTION)."""

    CREATED = "created"
    UPDATED = "updated"
    IN_SYNC = "in_sync"
    BLOCKED = "blocked"
    NEWER_SPEC = "newer_spec"
    FAILED = "failed"
