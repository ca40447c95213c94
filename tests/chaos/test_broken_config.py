"""The daemon's start on a broken config (`run`): a broken, empty, huge,
binary or missing file, or a directory, exits 78 with one `config error`
line and no traceback, and so does `run` on every fuzzed input that `load`
rejects.

Config loading is fuzzed in depth by tests/test_config_fuzz.py and
tests/test_config.py through `load` and `validate`; what is added here is
the daemon's own start.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kanade_watchdog import cli
from kanade_watchdog.config.load import load
from kanade_watchdog.model.errors import ConfigError
from tests.chaos.scale import pick
from tests.conftest import REPO_CONFIG
from tests.helpers_streams import run_cli
from tests.test_config_fuzz import documents, mutated_repo_text, toml_document

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
