"""The reporters on their own: `report.failures.FailureMemory` (say a failure
once, stay quiet while it is transient), `report.outcomes.OutcomeLog` (the
log lines a pass report becomes) and `report.status.StatusBoard` (STATUS
rendered once per pass, however many resources the pass touched).

Pass reports are built here as data, or come from a real `Daemon` run
in-process against `tests.fakebroker.FakeBroker` (no network, no sleep).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kanade_watchdog.config.load import parse
from kanade_watchdog.core.consumer_plan import ConsumerDecision, ConsumerOutcome
from kanade_watchdog.core.outcome import Outcome
from kanade_watchdog.core.plan import Action, Change, Decision
from kanade_watchdog.core.reports import (
    BrokerState,
    ConsumerDone,
    Done,
    Failed,
    Held,
    LinkState,
    PassReport,
    Scope,
)
from kanade_watchdog.core.result import Result
from kanade_watchdog.daemon.main import Daemon
from kanade_watchdog.model.consumers import Consumer
from kanade_watchdog.model.errors import ApiError, BrokerUnavailable, ResourceError
from kanade_watchdog.model.events import Trigger
from kanade_watchdog.model.resources import Kind, Resource
from kanade_watchdog.report.failures import TRANSIENT_QUIET, FailureMemory
from kanade_watchdog.report.logs import record_fields
from kanade_watchdog.report.outcomes import OutcomeLog
from kanade_watchdog.report.status import StatusBoard
from kanade_watchdog.report.systemd import Notifier
from tests.fakebroker import FakeBroker
from tests.test_lifecycle import FakeClock, Sent, links_to

ORDERS = Resource(kind=Kind.STREAM, name="ORDERS", declared={"subjects": ("orders.>",)})


def report(**values: Any) -> PassReport:
    base = PassReport(
        number=1, generation=0, scope=Scope.PARTIAL, trigger=None, started=0.0, finished=0.0
    )
    return replace(base, **values)


def failed(error: Exception, *, res: Resource = ORDERS) -> Failed:
    return Failed(res, error, Trigger.ADVISORY, present=True, delay=1.0)


def done(result: Result, action: Action, *, res: Resource = ORDERS, **decision: Any) -> Done:
    outcome = Outcome(Decision(res, action, **decision), result)
    return Done(outcome, Trigger.ADVISORY, marked_at=0.0, answered_at=0.0)


def refused(err_code: int, text: str) -> ResourceError:
    cause = ApiError(code=500, err_code=err_code, description=text, subject="$JS.API.X")
    return ResourceError("ORDERS", text, cause=cause)


def said(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= level]


# --- FailureMemory ------------------------------------------------------------------------


Step = tuple[str, str, bool, float]  # (op, text, transient, seconds to advance first)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["fail", "clear", "forget"]),
            st.sampled_from(["timeout", "no leader", "10047"]),
            st.booleans(),
            st.sampled_from([0.0, 1.0, TRANSIENT_QUIET]),
        ),
        max_size=40,
    )
)
def test_failure_memory_says_a_failure_once_and_a_transient_one_only_once_it_lasted(
    steps: list[Step],
) -> None:
    """Against a model: a failure is said only when its text differs from what
    was last said since the last clear or reload, and, if transient, only
    once its streak has lasted TRANSIENT_QUIET."""
    clock = FakeClock()
    memory = FailureMemory(clock)
    last_said: str | None = None
    since: float | None = None
    for op, text, transient, advance in steps:
        clock.advance(advance)
        if op == "clear":
            assert memory.cleared("S") == last_said
            last_said, since = None, None
        elif op == "forget":
            memory.forget()
            last_said = None
        else:
            since = clock.now if since is None else since
            lasted = clock.now - since >= TRANSIENT_QUIET
            expected = (not transient or lasted) and text != last_said
            assert memory.failing("S", text, transient=transient) is expected
            if expected:
                last_said = text


# --- OutcomeLog ---------------------------------------------------------------------------


def test_a_permanent_failure_is_warned_once_per_error_code_then_recovery_is_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same broker error code repeated (its text carrying live numbers) is
    one WARNING; another code is another; a later in-sync look says
    "in sync again" once."""
    out = OutcomeLog(clock=FakeClock())
    with caplog.at_level(logging.DEBUG, logger="kanade_watchdog"):
        for reserved in ("1GiB", "2GiB", "3GiB"):
            out.pass_done(report(failed=(failed(refused(10047, f"reserved {reserved}")),)))
        out.pass_done(report(failed=(failed(refused(10065, "subjects overlap")),)))
        out.pass_done(report(done=(done(Result.IN_SYNC, Action.IN_SYNC),)))
        out.pass_done(report(done=(done(Result.IN_SYNC, Action.IN_SYNC),)))
    assert said(caplog) == [
        "failed stream ORDERS: ORDERS: reserved 1GiB (permanent; retry in 1.0s; trigger advisory)",
        "failed stream ORDERS: ORDERS: subjects overlap (permanent; retry in 1.0s; trigger "
        "advisory)",
    ]
    assert said(caplog, logging.INFO)[-1] == "stream ORDERS is in sync again"
    assert said(caplog, logging.INFO).count("stream ORDERS is in sync again") == 1


def test_a_transient_failure_is_quiet_until_it_has_lasted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An election's timeouts: debug lines only, until the failure has lasted
    TRANSIENT_QUIET on the injected clock; then one WARNING, and debug lines
    again while it repeats."""
    clock = FakeClock()
    out = OutcomeLog(clock=clock)
    timeout = BrokerUnavailable("no answer on $JS.API.STREAM.INFO.ORDERS within 2s")
    with caplog.at_level(logging.DEBUG, logger="kanade_watchdog"):
        for _ in range(5):
            out.pass_done(report(failed=(failed(timeout),)))
            clock.advance(TRANSIENT_QUIET / 5 - 0.01)
        assert said(caplog) == []
        clock.advance(0.1)
        out.pass_done(report(failed=(failed(timeout),)))
        out.pass_done(report(failed=(failed(timeout),)))
    [warning] = said(caplog)
    assert "transient" in warning
    # five while quiet, one more after the warning: the same failure again
    assert said(caplog, logging.DEBUG).count(f"ORDERS failing: {timeout} (retry in 1.00s)") == 6


def test_an_update_that_never_converges_is_one_error_per_episode(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Held updates: the first of an episode is an ERROR with the diff, the
    repeats are debug lines."""
    out = OutcomeLog(clock=FakeClock())
    decision = Decision(ORDERS, Action.UPDATE, changes=(Change("max_msgs", 1, 2),))
    first = Held(decision, Trigger.VERIFY, reason="not converging: ...", first=True, wait=60)
    with caplog.at_level(logging.DEBUG, logger="kanade_watchdog"):
        out.pass_done(report(held=(first,)))
        out.pass_done(report(held=(replace(first, first=False),)))
    assert said(caplog, logging.ERROR) == [
        "stream ORDERS is not converging: ...; wanted: max_msgs: 1 -> 2 (trigger verify)"
    ]


def test_the_pass_summary_carries_its_counts_as_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The debug summary line of a full pass names its trigger and counts, and
    carries them as structured fields (JSON keys)."""
    out = OutcomeLog(clock=FakeClock())
    with caplog.at_level(logging.DEBUG, logger="kanade_watchdog"):
        out.pass_done(
            report(
                scope=Scope.FULL,
                trigger=Trigger.RESYNC,
                listed=frozenset({"ORDERS"}),
                done=(done(Result.IN_SYNC, Action.IN_SYNC),),
            )
        )
    [record] = [r for r in caplog.records if r.getMessage().startswith("pass (")]
    assert record.getMessage() == "pass (resync): 1 looked at, 1 in sync"
    assert record_fields(record) == {
        "trigger": "resync",
        "scope": "full",
        "looked": 1,
        "in_sync": 1,
    }


# --- OutcomeLog: the declared consumers -------------------------------------------------------

WORKER = Consumer(stream="ORDERS", durable="worker", declared={"ack_wait": 30_000_000_000})


def consumer(
    result: Result,
    action: Action,
    *,
    delay: float = 0.0,
    error: str = "",
    transient: bool = True,
    code: str = "",
    **decision: Any,
) -> ConsumerDone:
    outcome = ConsumerOutcome(
        ConsumerDecision(WORKER, action, **decision),
        result,
        error=error,
        transient=transient,
        code=code,
    )
    return ConsumerDone(outcome, Trigger.RETRY, marked_at=0.0, answered_at=0.0, delay=delay)


def test_consumer_actions_are_the_lines_and_fields_they_were(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Created, resumed, updated and blocked consumers are one line each with
    kind `consumer`, the `STREAM/DURABLE` name and the event's fields; an
    in-sync consumer says nothing."""
    out = OutcomeLog(clock=FakeClock())
    change = Change("ack_wait", 90_000_000_000, 30_000_000_000)
    consumers = (
        consumer(Result.CREATED, Action.CREATE),
        consumer(Result.CREATED, Action.CREATE, resume_from=61),
        consumer(Result.UPDATED, Action.UPDATE, changes=(change,)),
        consumer(Result.IN_SYNC, Action.IN_SYNC),
        consumer(Result.BLOCKED, Action.BLOCKED, reason="ack policy can not be updated"),
    )
    with caplog.at_level(logging.DEBUG, logger="kanade_watchdog.consumers"):
        out.pass_done(report(consumers=consumers))
    records = [r for r in caplog.records if r.name == "kanade_watchdog.consumers"]
    assert [r.getMessage() for r in records] == [
        "consumer ORDERS/worker: created",
        "consumer ORDERS/worker: created, resumed at stream sequence 61",
        f"consumer ORDERS/worker: updated ({change})",
        "consumer ORDERS/worker: blocked (ack policy can not be updated)",
    ]
    assert [r.levelno for r in records] == [logging.INFO] * 3 + [logging.WARNING]
    common = {"resource": "ORDERS/worker", "stream": "ORDERS", "kind": "consumer"}
    assert record_fields(records[1]) == {
        **common,
        "action": "created",
        "message_id": "created",
        "trigger": "retry",
        "resumed_from": 61,
    }
    assert record_fields(records[2])["diff"] == str(change)


def test_a_blocked_consumer_is_warned_once_per_reason_not_every_resync(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same blocked reason pass after pass is one WARNING; another reason
    is another; once in sync and blocked again, it is said again."""
    out = OutcomeLog(clock=FakeClock())
    ack = partial(consumer, Result.BLOCKED, Action.BLOCKED, reason="ack policy can not be updated")
    spec = partial(consumer, Result.NEWER_SPEC, Action.NEWER_SPEC, reason="spec_version 3 > 2")
    with caplog.at_level(logging.DEBUG, logger="kanade_watchdog.consumers"):
        for done in (ack(), ack(), ack(), spec(), spec()):
            out.pass_done(report(consumers=(done,)))
        out.pass_done(report(consumers=(consumer(Result.IN_SYNC, Action.IN_SYNC),)))
        out.pass_done(report(consumers=(ack(),)))
    assert said(caplog) == [
        "consumer ORDERS/worker: blocked (ack policy can not be updated)",
        "consumer ORDERS/worker: newer_spec (spec_version 3 > 2)",
        "consumer ORDERS/worker: blocked (ack policy can not be updated)",
    ]


def test_a_failed_consumer_says_when_it_is_tried_again_once_per_code(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A permanent failure is one WARNING naming its delay; the same code
    again is a debug line; a transient one stays quiet until it has lasted;
    a later in-sync look says "in sync again" once."""
    clock = FakeClock()
    out = OutcomeLog(clock=clock)
    denied = partial(
        consumer,
        Result.FAILED,
        Action.CREATE,
        error="permission denied",
        transient=False,
        code="PermissionDenied",
    )
    timeout = partial(
        consumer, Result.FAILED, Action.CREATE, error="no answer within 2s", code="NoAnswer"
    )
    with caplog.at_level(logging.DEBUG, logger="kanade_watchdog.consumers"):
        for _ in range(2):
            out.pass_done(report(consumers=(denied(delay=300.0),)))
        out.pass_done(report(consumers=(consumer(Result.IN_SYNC, Action.IN_SYNC),)))
        out.pass_done(report(consumers=(consumer(Result.IN_SYNC, Action.IN_SYNC),)))
        out.pass_done(report(consumers=(timeout(delay=1.5),)))
        assert said(caplog) == [
            "consumer ORDERS/worker: failed: permission denied (permanent; retry in 300.0s; "
            "trigger retry)"
        ]
        clock.advance(TRANSIENT_QUIET)
        out.pass_done(report(consumers=(timeout(delay=3.0),)))
    assert said(caplog)[-1] == (
        "consumer ORDERS/worker: failed: no answer within 2s (transient; retry in 3.0s; "
        "trigger retry)"
    )
    infos = said(caplog, logging.INFO)
    assert infos.count("consumer ORDERS/worker is in sync again") == 1
    debug = said(caplog, logging.DEBUG)
    assert "consumer ORDERS/worker failing: permission denied (retry in 300.00s)" in debug
    assert "consumer ORDERS/worker failing: no answer within 2s (retry in 1.50s)" in debug
    [warning] = [
        r for r in caplog.records if r.levelno == logging.WARNING and "permission" in r.getMessage()
    ]
    assert record_fields(warning)["error"] == "permission denied"
    assert record_fields(warning)["action"] == "failed"


# --- StatusBoard: rendered once per pass ----------------------------------------------------


def many(n: int) -> dict[str, dict[str, Any]]:
    return {f"S{i:04d}": {"subjects": [f"s{i}.>"]} for i in range(n)}


async def until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not check():  # noqa: ASYNC110 - a condition, not an event, is awaited
            await asyncio.sleep(0.005)


@pytest.mark.parametrize("n", [3, 200])
async def test_a_pass_renders_the_status_line_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n: int
) -> None:
    """However many resources a pass creates or finds in sync, the daemon
    renders STATUS= once for it (rendering is O(resources): per resource it
    would make a pass O(resources^2))."""
    config = parse(
        {"nats": {"servers": ["nats://fake:4222"]}, "streams": many(n)},
        str(tmp_path / "w.toml"),
    )
    sent = Sent()
    daemon = Daemon(config, notifier=Notifier(send=sent), connect=links_to(FakeBroker()))
    renders: list[int] = []
    line = daemon.board.line

    def counting() -> str:
        renders.append(daemon.worker.passes)
        return line()

    monkeypatch.setattr(daemon.board, "line", counting)
    run = asyncio.create_task(daemon.run())
    await until(lambda: sent.count("READY=1") == 1)  # the startup pass created all n
    assert renders.count(1) == 1
    daemon.worker.mark_all(Trigger.RESYNC)
    await until(lambda: daemon.worker.passes == 2)
    await until(lambda: len(renders) > 0 and renders[-1] == 2)
    assert renders.count(2) == 1
    daemon.request_stop()
    await run


def test_status_board_counts_what_a_pass_reported() -> None:
    """A pass report updates each resource it names; the line sums them up."""
    other = Resource(kind=Kind.STREAM, name="EVENTS", declared={"subjects": ("ev.>",)})
    board = StatusBoard([ORDERS, other])
    board.pass_done(
        report(
            done=(done(Result.CREATED, Action.CREATE),),
            failed=(failed(refused(10047, "no room"), res=other),),
            finished=5.0,
        )
    )
    assert board.line().startswith("1/2 in sync, 1 failing: EVENTS, last heal ORDERS ")
    assert board.all_present()
    assert board.last_pass == 5.0


def test_status_names_the_server_version_a_declared_field_needs() -> None:
    """A resource blocked because the connected server is too old for a declared
    field: STATUS says which server and which field."""
    board = StatusBoard([ORDERS])
    board.broker(BrokerState(LinkState.UP, "nats://b:4222", server_version="2.10.22"))
    board.pass_done(
        report(
            done=(
                done(
                    Result.BLOCKED,
                    Action.BLOCKED,
                    reason="allow_msg_ttl needs nats-server 2.11.0",
                    too_new=("allow_msg_ttl (nats-server 2.11.0)",),
                ),
            )
        )
    )
    assert "nats-server 2.10.22 too old: ORDERS needs allow_msg_ttl (nats-server 2.11.0)" in (
        board.line()
    )
