"""Command line: validate, plan, apply, check (one-shot) and run (the daemon).

Parses arguments, loads the config, and maps every outcome to an exit code
from `exitcodes`. No traceback ever reaches an operator: domain errors print
their one line, anything else prints one line and exits 70.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from . import __version__, exitcodes, render
from .apply import Outcome, execute
from .broker import Broker
from .cluster import cluster_facts
from .config import DEFAULT_PATH, ENV_PATH, Config, load
from .connection import connect_once
from .errors import BrokerError, ConfigError
from .export_cmd import add_arguments as add_export_arguments
from .export_cmd import export_command
from .logs import setup_logging
from .plan import Action, Decision, Observed, plan

log = logging.getLogger("kanade_watchdog")


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        default=os.environ.get(ENV_PATH, DEFAULT_PATH),
        help=f"config file (default ${ENV_PATH} or {DEFAULT_PATH})",
    )
    parser = argparse.ArgumentParser(
        prog="kanade-watchdog",
        description="Keep the kanade fleet's JetStream streams, KV buckets and object "
        "stores in place.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("validate", parents=[common], help="check the config file only (no broker)")
    for name, text in (
        ("plan", "show what apply would change (exit 2 if anything)"),
        ("apply", "converge once: create missing, update drifted"),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("-v", "--verbose", action="store_true", help="list in-sync resources too")
    sub.add_parser(
        "check", parents=[common], help="monitoring plugin: one status line, exit 0/1/2/3"
    )
    add_export_arguments(
        sub.add_parser(
            "export", parents=[common], help="write a declaration of what the broker holds"
        )
    )
    run = sub.add_parser("run", parents=[common], help="the daemon: keep everything in place")
    run.add_argument(
        "--log-format",
        choices=("auto", "text", "json", "journal"),
        default="auto",
        help="auto = journal under systemd, else text",
    )
    run.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return parser


async def _observe(config: Config) -> tuple[Broker, dict[str, Observed]]:
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


async def _observe_and_plan(config: Config) -> tuple[Broker, list[Decision]]:
    broker, observed = await _observe(config)
    return broker, plan(config.resources, observed, utcnow())


async def _plan(config: Config, args: argparse.Namespace) -> int:
    started = time.perf_counter()
    broker, decisions = await _observe_and_plan(config)
    await broker.nc.close()
    elapsed = time.perf_counter() - started
    pending = any(d.action is not Action.IN_SYNC for d in decisions)
    if args.json:
        print(
            render.report_json(
                in_sync=not pending,
                summary=render.plan_summary(decisions),
                resources=[render.decision_json(d) for d in decisions],
                requests=broker.requests,
                seconds=elapsed,
            )
        )
    else:
        for d in decisions:
            for line in render.decision_lines(d, verbose=args.verbose):
                print(line)
        print(render.plan_summary(decisions))
    return exitcodes.CHANGES_PENDING if pending else exitcodes.OK


async def _apply(config: Config, args: argparse.Namespace) -> int:
    started = time.perf_counter()
    broker, decisions = await _observe_and_plan(config)
    try:
        now = utcnow()
        outcomes: list[Outcome] = await asyncio.gather(
            *(execute(broker, d, config.resources, now) for d in decisions)
        )
    finally:
        await broker.nc.close()
    elapsed = time.perf_counter() - started
    ok = all(o.ok for o in outcomes)
    if args.json:
        print(
            render.report_json(
                in_sync=ok,
                summary=render.apply_summary(outcomes),
                resources=[render.outcome_json(o) for o in outcomes],
                requests=broker.requests,
                seconds=elapsed,
            )
        )
    else:
        for o in outcomes:
            if o.decision.action is not Action.IN_SYNC or args.verbose:
                print(render.outcome_line(o))
            for stake in o.decision.at_stake:
                if o.ok:
                    print(f"    WARNING data discarded: {stake}")
        total = sum(broker.requests.values())
        print(f"{render.apply_summary(outcomes)} ({elapsed:.3f}s, {total} requests)")
    return exitcodes.OK if ok else exitcodes.FAILURE


async def _check(config: Config) -> int:
    started = time.perf_counter()
    try:
        broker, observed = await _observe(config)
    except BrokerError as exc:
        print(f"JETSTREAM CRITICAL - broker unreachable: {exc}")
        return exitcodes.CHECK_CRITICAL
    await broker.nc.close()
    decisions = plan(config.resources, observed, utcnow())
    facts = cluster_facts(config.resources, observed)
    leaderless, short = facts.leaderless, facts.behind
    elapsed = time.perf_counter() - started
    by_action: dict[Action, list[str]] = {a: [] for a in Action}
    for d in decisions:
        by_action[d.action].append(d.resource.label)
    total = len(decisions)
    perf = (
        f"resources={total} in_sync={len(by_action[Action.IN_SYNC])} "
        f"missing={len(by_action[Action.CREATE])} drifted={len(by_action[Action.UPDATE])} "
        f"blocked={len(by_action[Action.BLOCKED])} "
        f"newer_spec={len(by_action[Action.NEWER_SPEC])} leaderless={len(leaderless)} "
        f"replicas_behind={len(short)} time={elapsed:.3f}s"
    )
    if by_action[Action.CREATE] or leaderless:
        status, code = "CRITICAL", exitcodes.CHECK_CRITICAL
        text = "; ".join(
            part
            for part in (
                "missing: " + ", ".join(by_action[Action.CREATE])
                if by_action[Action.CREATE]
                else "",
                "no leader: " + ", ".join(leaderless) if leaderless else "",
            )
            if part
        )
    elif short or any(by_action[a] for a in (Action.UPDATE, Action.BLOCKED, Action.NEWER_SPEC)):
        status, code = "WARNING", exitcodes.CHECK_WARNING
        words = {
            Action.UPDATE: "drifted",
            Action.BLOCKED: "blocked",
            Action.NEWER_SPEC: "newer spec present",
        }
        parts = [f"{word}: {', '.join(by_action[a])}" for a, word in words.items() if by_action[a]]
        if short:
            parts.append("replicas behind: " + ", ".join(short))
        text = "; ".join(parts)
    else:
        status, code = "OK", exitcodes.CHECK_OK
        text = f"{total}/{total} in sync"
    print(f"JETSTREAM {status} - {text} | {perf}")
    return code


def _run_async(coro: Any) -> int:
    try:
        result: int = asyncio.run(coro)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return exitcodes.INTERRUPTED
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"config error: {line}", file=sys.stderr)
        if args.command == "check":  # a monitoring system reads stdout only
            print(f"JETSTREAM UNKNOWN - config error: {exc.problems[0]}")
            return exitcodes.CHECK_UNKNOWN
        return exitcodes.CONFIG
    except BrokerError as exc:
        print(f"broker error: {exc}", file=sys.stderr)
        return exitcodes.FAILURE
    except Exception as exc:  # a bug: one line, not a traceback, for the operator
        print(f"internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        log.debug("internal error", exc_info=True)
        return exitcodes.INTERNAL


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        # The scheduler and systemd stay out of the one-shot commands' start-up.
        from .daemon import run_daemon  # noqa: PLC0415

        setup_logging(args.log_format, args.log_level)
        return run_daemon(args.config)
    setup_logging("text", "warning")
    if args.command == "export":  # needs [nats] only: the file may declare nothing yet
        return export_command(args.config, args)
    config = load(args.config)
    if args.command == "validate":
        print(f"{args.config}: OK ({len(config.resources)} resources)")
        return exitcodes.OK
    if args.command == "plan":
        return _run_async(_plan(config, args))
    if args.command == "apply":
        return _run_async(_apply(config, args))
    if args.command == "check":
        try:
            return _run_async(_check(config))
        except Exception as exc:
            print(f"JETSTREAM UNKNOWN - {exc}")
            return exitcodes.CHECK_UNKNOWN
    raise AssertionError(args.command)  # argparse allows nothing else
