"""Command line: validate, plan, apply, check (one-shot) and run (the daemon).

Parses arguments, resolves the config path once, loads the config, and maps
every outcome to an exit code from `exitcodes`. A one-shot command builds
its whole output first (`Output`); `_write` then prints it, escaping every
text line (broker-supplied names and metadata must not forge lines), and
treats a closed or full stdout the way Unix tools do. No traceback ever
reaches an operator: domain errors print their one line, anything else
prints one line and exits 70. With `--json`, a failure is a JSON document
too (`render.failure_json`).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import sys
from collections.abc import Callable, Sequence

from kanade_watchdog import __version__
from kanade_watchdog.commands.export_args import add_arguments as add_export_arguments
from kanade_watchdog.commands.oneshot import (
    Output,
    apply_command,
    plan_command,
    validate_output,
)
from kanade_watchdog.config.load import load
from kanade_watchdog.model import exitcodes
from kanade_watchdog.model.errors import BrokerError, ConfigError
from kanade_watchdog.model.printable import escape
from kanade_watchdog.model.settings import DEFAULT_PATH, ENV_PATH
from kanade_watchdog.report import render

# `plan` and `check` start often (a monitoring plugin runs `check` every few
# minutes), so their import path holds only what they use: applying, export
# (tomlkit), `check`'s report, the daemon (scheduler, metrics, systemd) and
# the daemon's log handlers (systemd's journal) are imported by the commands
# that need them (tests/test_cli_imports.py).

log = logging.getLogger("kanade_watchdog")


def _parser() -> argparse.ArgumentParser:
    # The top level and every command accept --config. Neither copy has a
    # default: a command's default would overwrite a --config given before
    # the command. `config_path` resolves the default once, after parsing.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
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
    validate = sub.add_parser(
        "validate", parents=[common], help="check the config file only (no broker)"
    )
    validate.add_argument("--json", action="store_true", help="machine-readable output")
    for name, text in (
        ("plan", "show what apply would change (exit 2 if anything)"),
        ("apply", "converge once: create missing, update drifted"),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("-v", "--verbose", action="store_true", help="list in-sync resources too")
    check = sub.add_parser(
        "check", parents=[common], help="monitoring plugin: one status line, exit 0/1/2/3"
    )
    check.add_argument("--json", action="store_true", help="the same facts as JSON")
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


def config_path(args: argparse.Namespace) -> str:
    """--config (in either position), else $KANADE_WATCHDOG_CONFIG, else the
    system path; absolute, so that every output names the file unambiguously."""
    given: str | None = getattr(args, "config", None)
    if given is None:
        given = os.environ.get(ENV_PATH) or DEFAULT_PATH
    return os.path.abspath(given)


def _failure(args: argparse.Namespace, path: str, *, code: int, problems: list[str]) -> Output:
    """A command that could not do its work: the lines on stderr, and with
    --json the same as a document on stdout. `check` speaks plugin instead:
    CRITICAL for broker trouble, UNKNOWN for a bad config or a bug."""
    as_json = bool(getattr(args, "json", False))
    if args.command == "check" and code != exitcodes.INTERRUPTED:
        from kanade_watchdog.commands.check import check_output  # noqa: PLC0415
        from kanade_watchdog.report import check  # noqa: PLC0415

        status = "CRITICAL" if code == exitcodes.FAILURE else "UNKNOWN"
        out = check_output(check.check_failure(status, problems), as_json=as_json, path=path)
        if code == exitcodes.CONFIG:  # every problem, not just the one the status line has
            out.err = problems
        return out
    if not as_json:
        return Output(code, err=problems)
    extra = {"valid": False} if args.command == "validate" else {"in_sync": False}
    doc = render.failure_json(config=path, problems=problems, exit_code=code, **extra)
    return Output(code, [doc], err=problems, raw=True)


class _LineFormatter(logging.Formatter):
    """One record, one escaped line: a message may carry names read from the
    broker, and a newline in them must not forge a line of its own."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {escape(record.getMessage())}"


def _quiet_logging() -> None:
    """A one-shot command's logging: warnings and errors, one line each, on
    stderr. (The daemon's handlers, `report.logs`, load systemd's journal.)"""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LineFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    # nats-py logs its own reconnect chatter at ERROR; the command's error says it once.
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    # asyncio warns on every TLS connection nats-py closes: nothing an operator can act on.
    logging.getLogger("asyncio").setLevel(logging.ERROR)


def _dispatch(args: argparse.Namespace, path: str) -> Output:
    _quiet_logging()
    config = load(path)
    as_json = bool(getattr(args, "json", False))
    if args.command == "validate":
        return validate_output(config, as_json=as_json, path=path)
    if args.command == "plan":
        return asyncio.run(plan_command(config, args, path))
    if args.command == "apply":
        return asyncio.run(apply_command(config, args, path))
    if args.command == "check":
        from kanade_watchdog.commands.check import check_command, check_output  # noqa: PLC0415

        return check_output(asyncio.run(check_command(config)), as_json=as_json, path=path)
    raise AssertionError(args.command)  # argparse allows nothing else


def _one_shot(args: argparse.Namespace, path: str) -> Output:
    try:
        return _dispatch(args, path)
    except ConfigError as exc:
        return _failure(
            args, path, code=exitcodes.CONFIG, problems=[f"config error: {p}" for p in exc.problems]
        )
    except BrokerError as exc:
        text = f"broker error: {exc}"
        if args.command == "check":
            from kanade_watchdog.report.check import broker_problem  # noqa: PLC0415

            text = broker_problem(exc)
        return _failure(args, path, code=exitcodes.FAILURE, problems=[text])
    except KeyboardInterrupt:
        return _failure(args, path, code=exitcodes.INTERRUPTED, problems=["interrupted"])
    except Exception as exc:  # a bug: one line, not a traceback, for the operator
        log.debug("internal error", exc_info=True)
        return _failure(
            args,
            path,
            code=exitcodes.INTERNAL,
            problems=[f"internal error: {type(exc).__name__}: {exc}"],
        )


def _say(line: str) -> None:
    """One line on stderr; a stderr that cannot take it changes nothing."""
    try:
        if sys.stderr is not None:
            print(escape(line), file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null, so that the interpreter's final flush of what
    could not be written succeeds quietly instead of reporting an error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    finally:
        os.close(devnull)


def _write(result: Output) -> int:
    """Print a command's output. A reader that went away (`| head`) ends the
    command quietly with 141, as a tool killed by SIGPIPE; any other write
    error (a full disk, /dev/full, a closed stdout) is one line and 74."""
    for line in result.err:
        _say(line)
    if not result.out:
        return result.code
    if sys.stdout is None:  # started with fd 1 closed
        _say(f"cannot write output: {os.strerror(errno.EBADF)}")
        return exitcodes.IO_ERROR
    try:
        for line in result.out:
            sys.stdout.write((line if result.raw else escape(line)) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return exitcodes.BROKEN_PIPE
    except OSError as exc:
        _silence_stdout()
        _say(f"cannot write output: {exc.strerror or exc}")
        return exitcodes.IO_ERROR
    return result.code


def _run(args: argparse.Namespace, path: str) -> int:
    # The scheduler and systemd stay out of the one-shot commands' start-up.
    from kanade_watchdog.daemon.main import run_daemon  # noqa: PLC0415
    from kanade_watchdog.report.logs import setup_logging  # noqa: PLC0415

    def run() -> int:
        setup_logging(args.log_format, args.log_level)
        return run_daemon(path)

    return _guarded(run)


def _guarded(command: Callable[[], int]) -> int:
    """Commands that print for themselves: domain errors as one line each."""
    try:
        return command()
    except ConfigError as exc:
        for line in exc.problems:
            _say(f"config error: {line}")
        return exitcodes.CONFIG
    except BrokerError as exc:
        _say(f"broker error: {exc}")
        return exitcodes.FAILURE
    except Exception as exc:  # a bug: one line, not a traceback, for the operator
        _say(f"internal error: {type(exc).__name__}: {exc}")
        log.debug("internal error", exc_info=True)
        return exitcodes.INTERNAL


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    path = config_path(args)
    if args.command == "run":
        return _run(args, path)
    if args.command == "export":  # needs [nats] only: the file may declare nothing yet
        from kanade_watchdog.commands.export import export_command  # noqa: PLC0415

        return _guarded(lambda: export_command(path, args))
    return _write(_one_shot(args, path))
