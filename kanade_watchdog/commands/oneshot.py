"""The one-shot commands `validate`, `plan`, `apply` and `check`: connect,
read the broker once, decide, and say what came of it as an `Output` that
`cli` prints (it owns arguments, output errors and exit-code mapping).

Applying is imported only by `apply`, `check` lives in `commands.check`,
and the consumers' modules are imported only when the file declares
consumers: `plan` and `check` start often (tests/test_cli_imports.py).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kanade_watchdog.broker.api import Broker
from kanade_watchdog.broker.connect import connect_once
from kanade_watchdog.core.plan import Action, Decision, Observed, plan
from kanade_watchdog.core.undeclared import undeclared
from kanade_watchdog.model import exitcodes
from kanade_watchdog.model.settings import Config
from kanade_watchdog.report import render

if TYPE_CHECKING:
    from kanade_watchdog.core.consumer_plan import ConsumerDecision


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass
class Output:
    """What a one-shot command prints and how it exits."""

    code: int
    out: list[str] = field(default_factory=list)  # stdout: text lines, or one JSON document
    err: list[str] = field(default_factory=list)  # stderr lines
    raw: bool = False  # `out` is JSON: it escapes its own strings


async def observe(config: Config) -> tuple[Broker, dict[str, Observed]]:
    """Connect and read every stream (one request per 256)."""
    broker_ref: list[Broker] = []
    nc = await connect_once(
        config.nats, on_error=lambda text: broker_ref[0].note_error(text) if broker_ref else None
    )
    broker = Broker(nc, timeout=config.nats.request_timeout, domain=config.nats.jetstream_domain)
    broker_ref.append(broker)
    try:
        observed = await broker.list_streams()
    except BaseException:
        await nc.close()
        raise
    return broker, observed


async def observe_and_plan(
    config: Config,
) -> tuple[Broker, list[Decision], list[render.Undeclared], set[str]]:
    """The stream decisions, what is undeclared, and the streams that exist."""
    broker, observed = await observe(config)
    extra = undeclared(set(config.by_stream()), observed, config.ignore)
    decisions = plan(config.resources, observed, utcnow(), server=broker.server)
    return broker, decisions, extra, set(observed)


async def consumer_plan(
    broker: Broker, config: Config, streams: set[str]
) -> list[ConsumerDecision]:
    """The declared consumers' decisions; none, and nothing imported for
    them, when the file declares no consumer."""
    if not config.consumers:
        return []
    from kanade_watchdog.broker.consumers import plan_consumers  # noqa: PLC0415

    decisions, _ = await plan_consumers(
        broker, config.consumers, existing_streams=streams, declared_streams=config.by_stream()
    )
    return decisions


async def plan_command(config: Config, args: argparse.Namespace, path: str) -> Output:
    started = time.perf_counter()
    broker, decisions, extra, streams = await observe_and_plan(config)
    try:
        consumer_decisions = await consumer_plan(broker, config, streams)
    finally:
        await broker.nc.close()
    elapsed = time.perf_counter() - started
    pending = any(d.action is not Action.IN_SYNC for d in decisions)
    consumer_docs: list[dict[str, Any]] = []
    consumer_lines: list[str] = []
    if consumer_decisions:
        from kanade_watchdog.report import consumers as consumer_report  # noqa: PLC0415

        pending = pending or consumer_report.pending(consumer_decisions)
        consumer_docs = [consumer_report.decision_json(d) for d in consumer_decisions]
        consumer_lines = [
            line
            for d in consumer_decisions
            for line in consumer_report.decision_lines(d, verbose=args.verbose)
        ]
    code = exitcodes.CHANGES_PENDING if pending else exitcodes.OK
    if args.json:
        doc = render.report_json(
            in_sync=not pending,
            summary=render.plan_summary(decisions),
            resources=[render.decision_json(d) for d in decisions] + consumer_docs,
            requests=broker.requests,
            seconds=elapsed,
            config=path,
            exit_code=code,
            undeclared=extra,
        )
        return Output(code, [doc], raw=True)
    lines = [line for d in decisions for line in render.decision_lines(d, verbose=args.verbose)]
    lines += consumer_lines
    lines += render.undeclared_lines(extra)
    lines.append(render.plan_footer(decisions, config=path, undeclared=extra))
    return Output(code, lines)


async def apply_command(config: Config, args: argparse.Namespace, path: str) -> Output:
    # Applying and the consumers' modules: only here (see the docstring).
    from kanade_watchdog.broker.apply import execute_all  # noqa: PLC0415
    from kanade_watchdog.broker.consumers import execute as execute_consumers  # noqa: PLC0415
    from kanade_watchdog.broker.consumers import plan_consumers  # noqa: PLC0415
    from kanade_watchdog.report import consumers as consumer_report  # noqa: PLC0415

    started = time.perf_counter()
    broker, decisions, _, streams = await observe_and_plan(config)
    try:
        outcomes = await execute_all(broker, decisions, config.resources, utcnow())
        # After the streams: a stream created just now takes its consumers.
        consumer_decisions, _ = await plan_consumers(
            broker,
            config.consumers,
            existing_streams=streams | {o.decision.resource.stream for o in outcomes if o.ok},
            declared_streams=config.by_stream(),
        )
        consumer_outcomes = await execute_consumers(broker, consumer_decisions)
    finally:
        await broker.nc.close()
    elapsed = time.perf_counter() - started
    ok = all(o.ok for o in outcomes) and all(o.ok for o in consumer_outcomes)
    code = exitcodes.OK if ok else exitcodes.FAILURE
    if args.json:
        doc = render.report_json(
            in_sync=ok,
            summary=render.apply_summary(outcomes),
            resources=[render.outcome_json(o) for o in outcomes]
            + [consumer_report.outcome_json(o) for o in consumer_outcomes],
            requests=broker.requests,
            seconds=elapsed,
            config=path,
            exit_code=code,
        )
        return Output(code, [doc], raw=True)
    lines = [line for o in outcomes for line in render.outcome_lines(o, verbose=args.verbose)]
    lines += [
        line
        for o in consumer_outcomes
        for line in consumer_report.outcome_lines(o, verbose=args.verbose)
    ]
    lines.append(
        render.apply_footer(outcomes, requests=broker.requests, seconds=elapsed, config=path)
    )
    return Output(code, lines)


def validate_output(config: Config, *, as_json: bool, path: str) -> Output:
    if as_json:
        return Output(exitcodes.OK, [render.validate_json(config.resources, config=path)], raw=True)
    return Output(exitcodes.OK, [f"{path}: OK ({len(config.resources)} resources)"])
