"""What the daemon tells its reporters, as data.

Pure. The supervisor (`daemon.main`), the connection and the worker
produce these; the reporters (`report.outcomes` for the log and journal,
`report.status`, `report.systemd`, `report.meter` for metrics) receive them
through `ports.Reporter`. A pass is one `PassReport`: what was looked at,
what came of each resource and each declared consumer, and the bookkeeping the worker added (when a
failed resource is tried again, whether a held update is news).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from kanade_watchdog.core.cluster import ClusterFacts
from kanade_watchdog.core.consumer_plan import ConsumerOutcome
from kanade_watchdog.core.outcome import Outcome
from kanade_watchdog.core.plan import Action, Decision
from kanade_watchdog.core.result import Result
from kanade_watchdog.model.events import Trigger
from kanade_watchdog.model.resources import Resource


class RunState(StrEnum):
    """Where the daemon is in its life."""

    STARTING = "starting"  # tasks being started
    RUNNING = "running"
    RELOADING = "reloading"  # a SIGHUP's file being read and applied
    STOPPING = "stopping"


class LinkState(StrEnum):
    CONNECTING = "connecting"  # a new client is being connected (the broker counts as down)
    UP = "up"
    LOST = "lost"


@dataclass(frozen=True)
class BrokerState:
    state: LinkState
    servers: str  # the configured servers, as the operator wrote them
    url: str = ""  # host:port reached (UP)
    server_version: str = ""  # the nats-server version it announced (UP)
    first: bool = False  # UP: the first connection since the start
    resumed: bool = False  # UP: the same client reconnected (else a new client)


@dataclass(frozen=True)
class Reloaded:
    """A SIGHUP's reload, applied (`ok`) or refused (`problems`)."""

    path: str
    ok: bool
    problems: tuple[str, ...] = ()
    resources: int = 0
    generation: int = 0  # the config generation now running
    connected: bool = False  # a pass on the new config can run now


def present_after(decision: Decision) -> bool:
    """Whether the resource exists on the broker, judging by the decision."""
    if decision.present is not None:
        return decision.present
    return decision.action is not Action.CREATE and not (
        decision.action is Action.BLOCKED and not decision.changes
    )


@dataclass(frozen=True)
class Done:
    """A resource looked at, and what came of it (anything but a failure)."""

    outcome: Outcome
    trigger: Trigger
    marked_at: float  # monotonic: when the trigger that brought it in arrived
    answered_at: float  # monotonic: when the broker answered (a write's acknowledgement)

    @property
    def resource(self) -> Resource:
        return self.outcome.decision.resource

    @property
    def result(self) -> Result:
        return self.outcome.result


@dataclass(frozen=True)
class Failed:
    """A resource whose read or write failed."""

    resource: Resource
    error: Exception  # a ResourceError (a write) or a BrokerError (a read)
    trigger: Trigger
    present: bool | None  # exists on the broker, as far as known
    decision: Decision | None = None  # the write that failed; None when the read did
    delay: float = 0.0  # seconds until it is tried again (the worker's backoff)

    @property
    def transient(self) -> bool:
        return bool(getattr(self.error, "transient", True))

    @property
    def code(self) -> str:
        """The broker's err_code, else the error's class name."""
        cause = getattr(self.error, "cause", self.error)
        code = getattr(cause, "err_code", 0)
        return str(code) if code else type(cause).__name__


@dataclass(frozen=True)
class ConsumerDone:
    """A declared consumer looked at after the pass's streams, and what came
    of it, a failure included (its `delay` is the consumer's own backoff)."""

    outcome: ConsumerOutcome
    trigger: Trigger
    marked_at: float  # monotonic: when the trigger that brought its stream in arrived
    answered_at: float  # monotonic: when the broker answered (a write's acknowledgement)
    delay: float = 0.0  # a failure: seconds until it is tried again

    @property
    def name(self) -> str:
        """`STREAM/DURABLE`."""
        return self.outcome.decision.consumer.name

    @property
    def result(self) -> Result:
        return self.outcome.result


@dataclass(frozen=True)
class Held:
    """An update the write guard refused: the resource does not converge."""

    decision: Decision
    trigger: Trigger
    reason: str = ""
    first: bool = False  # the first refusal of this episode
    wait: float = 0.0  # seconds until it may be written again


@dataclass(frozen=True)
class ReadFailure:
    """The full pass's stream list could not be read: nothing was looked at."""

    error: Exception
    delay: float = 0.0

    @property
    def transient(self) -> bool:
        return bool(getattr(self.error, "transient", True))


class Scope(StrEnum):
    FULL = "full"  # every declared resource, from the stream list
    PARTIAL = "partial"  # the streams events marked, read one by one


class Cut(StrEnum):
    DEADLINE = "deadline"  # ran past pass_deadline: cancelled, retried
    LOST = "lost"  # the connection went: the reconnect's pass redoes it


@dataclass(frozen=True)
class PassReport:
    number: int  # passes since the start, this one included
    generation: int  # the config generation it ran on (one per reload)
    scope: Scope
    trigger: Trigger | None  # a full pass's trigger; None for a pass of events
    started: float  # monotonic
    finished: float
    done: tuple[Done, ...] = ()
    failed: tuple[Failed, ...] = ()
    held: tuple[Held, ...] = ()
    read_error: ReadFailure | None = None
    facts: ClusterFacts | None = None  # a full pass's cluster facts
    listed: frozenset[str] | None = None  # a full pass: every stream name on the broker
    writes: int = 0  # create and update requests sent
    cut: Cut | None = None
    deadline: float = 0.0  # the pass_deadline it ran under
    # In sync as last reported, and not reported again (`daemon.memo`).
    unchanged: int = 0
    consumers: tuple[ConsumerDone, ...] = ()  # the declared consumers it looked at
    # Declared consumers not on the broker after the pass (None: not looked at).
    consumers_missing: frozenset[str] | None = None

    @property
    def label(self) -> str:
        """ "resync", "startup"...: a full pass by its trigger; "events" otherwise."""
        return str(self.trigger) if self.trigger is not None else "events"

    @property
    def looked(self) -> int:
        return len(self.done) + len(self.failed) + len(self.held) + self.unchanged

    @property
    def in_sync(self) -> int:
        return sum(d.result is Result.IN_SYNC for d in self.done) + self.unchanged

    @property
    def ok(self) -> bool:
        """Completed, everything read and nothing failed."""
        return self.cut is None and self.read_error is None and not self.failed

    @property
    def seconds(self) -> float:
        return max(0.0, self.finished - self.started)
