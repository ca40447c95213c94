"""What the core needs from the outside world, as protocols.

`Broker` is the JetStream stream API the reconciler and the one-shot
commands use; `broker.api.Broker` speaks it over a nats-py connection, and
tests/fakebroker.py keeps it in memory (tests/test_broker_contract.py runs
one suite against both, so the fake stays honest). Pure: no I/O here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any, Protocol

from kanade_watchdog.core.plan import Observed


class Broker(Protocol):
    """Stream management on one broker. Every failure is an `errors.BrokerError`."""

    requests: Counter[str]  # by API verb: list, info, create, update, account

    async def list_streams(self) -> dict[str, Observed]:
        """Every stream by name; leaderless ones as `Observed(leaderless=True)`."""
        ...

    async def stream_info(self, name: str) -> Observed | None:
        """One stream, or None when it does not exist."""
        ...

    async def create(self, config: Mapping[str, Any]) -> Observed:
        """Create; `did_create` is False when an identical stream was there."""
        ...

    async def update(self, config: Mapping[str, Any]) -> Observed:
        """Replace a stream's whole config."""
        ...

    async def account_info(self) -> dict[str, Any]:
        """The account's JetStream usage and reservations."""
        ...
