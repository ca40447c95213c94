"""The metrics reporter: pass reports, connection changes and reloads into
`metrics.Metrics` (served on /metrics by `http.Endpoint`).

A `ports.Reporter`, like the log and the status board, so the metrics say
what those say: a heal is a `created` outcome (its latency runs from the
arrival of the trigger that brought the resource into the pass to the
broker's answer to the create), a failure is counted by its broker error
code, and each resource's state is what the broker last showed. Declared
consumers count the same way, with kind `consumer` and their `STREAM/DURABLE`
name.
"""

from __future__ import annotations

from collections.abc import Sequence

from kanade_watchdog import __version__
from kanade_watchdog.core.plan import Action
from kanade_watchdog.core.ports import Quiet
from kanade_watchdog.core.reports import (
    BrokerState,
    ConsumerDone,
    Failed,
    LinkState,
    PassReport,
    Reloaded,
    Scope,
)
from kanade_watchdog.core.result import Result
from kanade_watchdog.model.consumers import CONSUMER_KIND, Consumer
from kanade_watchdog.model.resources import Resource
from kanade_watchdog.report.metrics import Metrics

_STATE_OF = {
    Result.CREATED: "in_sync",
    Result.UPDATED: "in_sync",
    Result.IN_SYNC: "in_sync",
    Result.BLOCKED: "blocked",
    Result.NEWER_SPEC: "newer_spec",
}


def _failed_state(failed: Failed) -> str:
    """A failed write leaves the resource as the broker showed it: missing
    (the create failed) or drifted (the update did); a failed read is "failed"."""
    if failed.decision is None:
        return "failed"
    if failed.present is False:
        return "missing"
    return "drifted" if failed.decision.action is Action.UPDATE else "failed"


class MetricsReporter(Quiet):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def declared(self, resources: Sequence[Resource], consumers: Sequence[Consumer] = ()) -> None:
        pairs = [(str(r.kind), r.name) for r in resources]
        self.metrics.declare(pairs + [(CONSUMER_KIND, c.name) for c in consumers])

    def broker(self, state: BrokerState) -> None:
        up = state.state is LinkState.UP
        self.metrics.connected(up)
        if up:
            if not state.first:
                self.metrics.reconnected()
            self.metrics.build_info(__version__, state.server_version)

    def pass_done(self, report: PassReport) -> None:
        m = self.metrics
        for done in report.done:
            res = done.resource
            kind = str(res.kind)
            m.resource_state(kind, res.name, _STATE_OF[done.result])
            if done.result is Result.CREATED:
                m.healed(kind, done.trigger, done.answered_at - done.marked_at)
            elif done.result is Result.UPDATED:
                m.updated(kind, done.trigger)
        for failed in report.failed:
            m.failure(failed.code)
            m.resource_state(str(failed.resource.kind), failed.resource.name, _failed_state(failed))
        for held in report.held:
            res = held.decision.resource
            m.resource_state(str(res.kind), res.name, "blocked")
        for consumer in report.consumers:
            self._consumer(consumer)
        if report.read_error is not None:
            error = report.read_error.error
            code = getattr(error, "err_code", 0)
            m.failure(str(code) if code else type(error).__name__)
        writes = report.writes + sum(c.outcome.decision.writes for c in report.consumers)
        if writes:
            m.writes(writes)
        m.pass_done(report.seconds, full=report.scope is Scope.FULL, ok=report.ok)

    def _consumer(self, done: ConsumerDone) -> None:
        """As for streams, kind `consumer`: a failed create leaves it missing,
        a failed update drifted."""
        m, o = self.metrics, done.outcome
        if o.result is Result.FAILED:
            m.failure(o.code)
            state = "missing" if o.decision.action is Action.CREATE else "drifted"
        else:
            state = _STATE_OF[o.result]
        m.resource_state(CONSUMER_KIND, done.name, state)
        if o.result is Result.CREATED:
            m.healed(CONSUMER_KIND, done.trigger, done.answered_at - done.marked_at)
        elif o.result is Result.UPDATED:
            m.updated(CONSUMER_KIND, done.trigger)

    def reloaded(self, result: Reloaded) -> None:
        self.metrics.reload(result.ok)
