"""Short counts for CI, long ones for `make chaos` (KANADE_CHAOS_FULL=1).

One switch for the whole suite, so a scenario says both sizes in one place:
`pick(short, full)`. The long run also lifts pytest's per-test timeout.
"""

from __future__ import annotations

import os
from typing import TypeVar

FULL_ENV = "KANADE_CHAOS_FULL"
REPORT_ENV = "KANADE_CHAOS_REPORT"  # a path: the figures table is written there

FULL = os.environ.get(FULL_ENV) == "1"

T = TypeVar("T")


def pick(short: T, full: T) -> T:
    """`short` in the default (CI) run, `full` under KANADE_CHAOS_FULL=1."""
    return full if FULL else short


def timeout(short: float, full: float) -> float:
    """A per-test timeout in seconds for `pytest.mark.timeout`."""
    return pick(short, full)
