"""What the core needs from the outside world, as protocols.

`Broker` is the JetStream stream API the reconciler and the one-shot
commands use; `broker.api.Broker` speaks it over a nats-py connection, and
tests/fakebroker.py keeps it in memory (tests/test_broker_contract.py runs
one suite against both, so the fake stays honest).

`ConsumerBroker` is the durable-consumer part of the same API, kept apart
so a broker without it (a wrapper in a test) simply has no consumers healed.

`Reporter` is how the daemon says what happened (`reports`): the log and
journal, the status board, systemd and the metrics each implement it, and
`Reporters` hands every call to each of them in turn. Pure: no I/O here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from kanade_watchdog.core.plan import Observed
from kanade_watchdog.core.reports import BrokerState, PassReport, Reloaded, RunState
from kanade_watchdog.core.serverinfo import ServerInfo
from kanade_watchdog.model.consumers import Consumer
from kanade_watchdog.model.resources import Resource


class Broker(Protocol):
    """Stream management on one broker. Every failure is an `errors.BrokerError`."""

    requests: Counter[str]  # by API verb: list, info, create, update, account

    @property
    def server(self) -> ServerInfo:
        """The connected server's version and API level (what it can be sent)."""
        ...

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


@runtime_checkable
class StreamNames(Protocol):
    """A broker that lists stream names alone (one request per 1,024): the
    cheap way to learn which of many streams exist. Every failure is an
    `errors.BrokerError`."""

    async def stream_names(self) -> set[str]:
        """The name of every stream on the broker."""
        ...


@runtime_checkable
class ConsumerBroker(Protocol):
    """Durable consumers on one broker (`broker.consumers` builds on it). Every
    failure is an `errors.BrokerError`."""

    async def list_consumers(self, stream: str) -> list[Mapping[str, Any]]:
        """Every consumer of `stream`, CONSUMER.INFO-shaped (name, config,
        delivered, ack_floor)."""
        ...

    async def put_consumer(
        self, stream: str, durable: str, config: Mapping[str, Any], *, action: str
    ) -> Mapping[str, Any]:
        """CONSUMER.CREATE with `action` "create" (never overwrites, 10148) or
        "update" (never creates, 10149)."""
        ...


class Reporter(Protocol):
    """An observer of the daemon. Called on the event loop: quick, no I/O
    that can block, never raising on purpose."""

    def run_state(self, state: RunState) -> None:
        """The daemon started, runs, reloads or stops."""

    def declared(self, resources: Sequence[Resource], consumers: Sequence[Consumer] = ()) -> None:
        """What the config declares: at start and after every applied reload."""

    def broker(self, state: BrokerState) -> None:
        """The connection is being made, is up or was lost."""

    def pass_done(self, report: PassReport) -> None:
        """A reconcile pass ended (or was cut short)."""

    def reloaded(self, result: Reloaded) -> None:
        """A reload was applied or refused."""


class Quiet:
    """A reporter that hears nothing: subclass it and override what matters."""

    def run_state(self, state: RunState) -> None:
        pass

    def declared(self, resources: Sequence[Resource], consumers: Sequence[Consumer] = ()) -> None:
        pass

    def broker(self, state: BrokerState) -> None:
        pass

    def pass_done(self, report: PassReport) -> None:
        pass

    def reloaded(self, result: Reloaded) -> None:
        pass


class Reporters:
    """Several reporters as one, called in the order given (the status board
    before those that read it)."""

    def __init__(self, *reporters: Reporter) -> None:
        self.reporters = list(reporters)

    def run_state(self, state: RunState) -> None:
        for r in self.reporters:
            r.run_state(state)

    def declared(self, resources: Sequence[Resource], consumers: Sequence[Consumer] = ()) -> None:
        for r in self.reporters:
            r.declared(resources, consumers)

    def broker(self, state: BrokerState) -> None:
        for r in self.reporters:
            r.broker(state)

    def pass_done(self, report: PassReport) -> None:
        for r in self.reporters:
            r.pass_done(report)

    def reloaded(self, result: Reloaded) -> None:
        for r in self.reporters:
            r.reloaded(result)
