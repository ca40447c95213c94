"""Hostile input: garbage on the advisory subjects from a misbehaving client,
and broken config files given to the daemon itself (`run`).

Config loading is fuzzed in depth by tests/test_config_fuzz.py and
tests/test_config.py through `load` and `validate`; what is added here is
the daemon's own start: `run` on a broken, empty, huge, binary or missing
file, or on a directory, exits 78 with one `config error` line and no
traceback, and so does `run` on every fuzzed input that `load` rejects.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kanade_watchdog import cli
from kanade_watchdog.config.load import load
from kanade_watchdog.model.errors import ConfigError
from tests.chaos import figures
from tests.chaos.harness import Scene
from tests.chaos.invariants import Invariants
from tests.chaos.ledger import api_ok
from tests.chaos.scale import pick, timeout
from tests.conftest import REPO_CONFIG
from tests.daemonproc import has_message, is_action
from tests.helpers_streams import run_cli
from tests.test_config_fuzz import documents, mutated_repo_text, toml_document

PREFIX = "$JS.EVENT.ADVISORY.STREAM"
TYPE = "io.nats.jetstream.advisory.v1.stream_action"
ROUNDS = pick(10, 400)
SENTINEL_EVERY = 5  # rounds between waits for the daemon to catch up


def advisory(stream: str, action: str = "delete", **extra: Any) -> bytes:
    return json.dumps({"type": TYPE, "stream": stream, "action": action, **extra}).encode()


def garbage(round_no: int) -> list[tuple[str, bytes, str]]:
    """(subject, payload, the debug reason expected or '' for silently ignored)."""
    n = round_no
    return [
        (f"{PREFIX}.DELETED.RESULTS", b"{not json", "not JSON"),
        (f"{PREFIX}.DELETED.RESULTS", b"", "not JSON"),
        (f"{PREFIX}.DELETED.EXEC", bytes(range(256)) * 4, "not JSON"),
        # Nested past the JSON parser's depth, yet under the size cap.
        (f"{PREFIX}.DELETED.EXEC", b"[" * 30_000 + b"]" * 30_000, "not JSON"),
        (f"{PREFIX}.UPDATED.RESULTS", b"null", "not a stream action"),
        (f"{PREFIX}.UPDATED.RESULTS", b"[1, 2, 3]", "not a stream action"),
        (f"{PREFIX}.CREATED.KV_jobs", b"42", "not a stream action"),
        (f"{PREFIX}.DELETED.RESULTS", json.dumps({"type": 5}).encode(), "not a stream action"),
        (f"{PREFIX}.DELETED.RESULTS", advisory("EXEC"), "not a stream action"),
        (f"{PREFIX}.DELETED.KV_jobs", advisory("KV_jobs", type="x"), "not a stream action"),
        (f"{PREFIX}.EXPLODED.RESULTS", advisory("RESULTS"), "unknown action"),
        (f"{PREFIX}.deleted.RESULTS", advisory("RESULTS"), "unknown action"),
        (f"{PREFIX}.DELETED.NOPE_{n}", advisory(f"NOPE_{n}"), ""),  # not declared
        (f"{PREFIX}.UPDATED.OBJ_nope{n}", advisory(f"OBJ_nope{n}", "modify"), ""),
        (f"{PREFIX}.UPDATED.RESULTS", b"x" * 900_000, "payload"),
        (
            f"{PREFIX}.DELETED.RESULTS",
            advisory("RESULTS", pad="y" * 100_000),  # well-formed but oversized
            "payload",
        ),
    ]


async def sentinel(scene: Scene, daemon: Any, stream: str = "AUDIT") -> None:
    """A genuine-looking UPDATED advisory, and wait until the daemon acted on
    it: nats-py hands one subscription its messages in order, so everything
    published before it has been handled."""
    mark = daemon.mark()
    await scene.nc.publish(f"{PREFIX}.UPDATED.{stream}", advisory(stream, "modify"))
    await daemon.wait_for(has_message("pass (events)"), after=mark, within=10)


@pytest.mark.timeout(timeout(60, 600))
async def test_garbage_on_the_advisory_subjects_is_ignored(scene: Scene) -> None:
    """Malformed JSON, binary, nesting deeper than the parser goes, wrong
    types, unknown actions, undeclared names and payloads up to 900 KB,
    published round after round: each malformed one is dropped with a debug
    line saying why, none causes a write or a crash, memory stays flat, and
    a real delete afterwards is still healed through its advisory."""
    figure = scene.figure
    daemon = scene.start(scene.config())
    inv = Invariants(scene, daemon)
    await scene.converge(daemon, t0=time.monotonic(), after=0, reconnect=False)
    await inv.quiet_when_in_sync()
    inv.baseline()
    audit = await scene.ledger.collect()
    before, mark = audit.mark(), daemon.mark()
    expected: dict[str, int] = {}
    for n in range(ROUNDS):
        for subject, payload, reason in garbage(n):
            await scene.nc.publish(subject, payload)
            figure.faults += 1
            if reason:
                expected[reason] = expected.get(reason, 0) + 1
        await scene.nc.flush()
        if n % SENTINEL_EVERY == SENTINEL_EVERY - 1:
            await sentinel(scene, daemon)
            inv.alive()
    await sentinel(scene, daemon)
    ignored = [
        str(line["message"])
        for line in daemon.find(has_message("ignoring advisory"), after=mark)
        if line.get("level") == "debug"
    ]
    for reason, count in expected.items():
        seen = sum(reason in text for text in ignored)
        assert seen == count, f"{reason!r}: {seen} debug lines for {count} messages"
    await audit.collect(settle=0.1)
    assert not audit.writes(after=before), [c.subject for c in audit.writes(after=before)]
    undeclared = [c for c in audit.calls[before:] if "NOPE" in c.subject or "nope" in c.subject]
    assert not undeclared, "advisories about undeclared streams caused requests"
    inv.memory_flat()
    # The subscription still works: a real delete is healed by its advisory.
    mark, deleted_at = daemon.mark(), time.time()
    await api_ok(scene.nc, "$JS.API.STREAM.DELETE.KV_jobs")
    healed = await daemon.wait_for(is_action("created", stream="KV_jobs"), after=mark, within=5)
    assert healed[0]["trigger"] == "advisory"
    figure.converged(float(healed[0]["ts"]) - deleted_at)
    figure.survived, figure.heals = figure.faults, 1
    await inv.quiet_when_in_sync()
    await inv.no_destructive()
    await inv.stops_cleanly()
    figures.publish(figure)


# --- the daemon's start on a broken config --------------------------------------------


def _repo_with(old: str, new: str) -> bytes:
    text = REPO_CONFIG.read_text()
    assert old in text
    return text.replace(old, new, 1).encode()


BROKEN: dict[str, bytes] = {
    "toml-syntax": b"[nats\nservers = [",
    "empty": b"",
    "blank": b"  \n\t\n",
    "binary": bytes(range(256)) * 64,
    "not-utf8": b"[streams.X]\nsubjects = ['\xff\xfe']\n",
    "bad-duration": _repo_with('max_age = "30d"', 'max_age = "30 days"'),
    "unknown-key": _repo_with("history = 5", "histroy = 5"),
    "huge": b"# padding\n" * 600_000,  # 6 MB, over the 4 MiB limit
    "huge-line": b'x = "' + b"y" * 5_000_000 + b'"\n',
}


def broken_path(tmp_path: Path, case: str) -> Path:
    if case == "directory":
        return tmp_path
    if case == "missing":
        return tmp_path / "nowhere" / "watchdog.toml"
    path = tmp_path / f"{case}.toml"
    path.write_bytes(BROKEN[case])
    return path


@pytest.mark.parametrize("case", [*BROKEN, "directory", "missing"])
@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_run_with_a_broken_config_exits_78_with_one_line(
    tmp_path: Path, case: str, log_format: str
) -> None:
    """`run` on a broken config exits 78 (it never starts, so never hangs: the
    run is bounded), printing exactly one line that says `config error` and
    names the file, and no traceback."""
    path = broken_path(tmp_path, case)
    run = await run_cli("run", "--log-format", log_format, config=path, limit_seconds=20)
    assert run.code == 78, (run.code, run.stderr[-2000:])
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines[:5]
    assert "config error: " in lines[0], lines[0][:300]
    assert str(path) in lines[0], lines[0][:300]
    assert len(lines[0]) < 1000
    if log_format == "json":
        doc = json.loads(lines[0])
        assert doc["level"] == "error"
    assert run.stdout == ""


@contextlib.contextmanager
def captured_run() -> Iterator[io.StringIO]:
    """stderr of an in-process `cli.main(['run', ...])`, logging set-up undone."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in ("nats", "apscheduler")}
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            yield err
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, old in levels.items():
            logging.getLogger(name).setLevel(old)


def run_rejects_like_load(text: bytes) -> None:
    """If `load` rejects the file, `run` exits 78 printing exactly the
    problem lines, as `config error` lines, and nothing else. (`run` on an
    accepted file would start the daemon: `load`'s verdict is the oracle.)"""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "watchdog.toml"
        path.write_bytes(text)
        try:
            load(str(path))
        except ConfigError as exc:
            problems = exc.problems
        else:
            return
        with captured_run() as err:
            code = cli.main(["run", "--config", str(path), "--log-format", "text"])
    assert code == 78
    out = err.getvalue()
    assert "Traceback" not in out
    assert out.count(" config error: ") == len(problems), out[-2000:]
    for problem in problems:
        assert f"config error: {problem}" in out


RUN_FUZZ = settings(
    max_examples=pick(40, 400),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@given(mutated_repo_text())
@RUN_FUZZ
def test_run_on_mutated_repo_configs_rejects_like_load(text: str) -> None:
    """`run` on the real config.toml with random mutations exits 78 with the
    problem lines whenever `load` rejects it, never another exception."""
    run_rejects_like_load(text.encode())


@given(documents)
@RUN_FUZZ
def test_run_on_random_toml_documents_rejects_like_load(doc: dict[str, Any]) -> None:
    """`run` on random TOML documents exits 78 with the problem lines whenever
    `load` rejects them, never another exception."""
    run_rejects_like_load(toml_document(doc).encode())


@given(st.binary(max_size=400))
@RUN_FUZZ
def test_run_on_random_bytes_rejects_like_load(raw: bytes) -> None:
    """`run` on arbitrary bytes exits 78 whenever `load` rejects them."""
    run_rejects_like_load(raw)
