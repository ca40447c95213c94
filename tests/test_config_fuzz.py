"""Property: whatever the file holds, loading it either yields a Config or a
ConfigError whose every line starts with the file path; no other exception
escapes, and `validate` exits 0 or 78 without a traceback."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import tempfile
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kanade_watchdog import cli
from kanade_watchdog.config.load import FIELDS, load, parse
from kanade_watchdog.model.errors import ConfigError
from kanade_watchdog.model.resources import SECTION
from kanade_watchdog.model.settings import Config

REPO_CONFIG = Path(__file__).resolve().parent.parent / "config.toml"
REPO_TEXT = REPO_CONFIG.read_text(encoding="utf-8")

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- a tiny TOML writer ---------------------------------------------------------------


def toml_string(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise TypeError(type(value))


def toml_document(doc: dict[str, Any]) -> str:
    """Top-level scalars first, then one [table] per dict-of-dicts entry, so the
    output exercises table headers as well as inline tables."""
    lines: list[str] = []
    tables: list[tuple[str, str, Any]] = []
    for key, value in doc.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            tables.extend((key, name, sub) for name, sub in value.items())
        else:
            lines.append(f"{toml_string(key)} = {toml_value(value)}")
    for section, name, table in tables:
        lines.append(f"[{toml_string(section)}.{toml_string(name)}]")
        lines.extend(f"{toml_string(k)} = {toml_value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


# --- strategies -------------------------------------------------------------------------

ALL_FIELD_KEYS = sorted({k for fields in FIELDS.values() for k in fields} | {"protect"})
SETTINGS_KEYS = [
    "servers",
    "name",
    "connect_timeout",
    "request_timeout",
    "reconnect_wait",
    "jetstream_domain",
    "resync_interval",
    "resync_jitter",
    "backoff_initial",
    "backoff_max",
    "advisories",
    "stop_timeout",
]
NAMES = ["S", "KV_jobs", "jobs", "OBJ_blobs", "blobs", "a.b", "bad name!", ""]

durations = st.builds(
    lambda n, unit: f"{n}{unit}",
    st.integers(min_value=-5, max_value=10**20),
    st.sampled_from(["ns", "us", "ms", "s", "m", "h", "d", "w", "", "x", " d"]),
)
sizes = st.builds(
    lambda n, unit: f"{n}{unit}",
    st.one_of(st.integers(min_value=-5, max_value=10**25), st.floats(0, 1e6)),
    st.sampled_from(["B", "KiB", "MiB", "GiB", "TiB", "MB", "k", "", "XB"]),
)
subjects = st.lists(
    st.sampled_from(["a.>", "a.b", "*", ">", "$KV.>", "$KV.jobs.>", "$O.*.C.>", "a..b", "s.>"]),
    max_size=4,
)
scalars = st.one_of(
    st.text(max_size=20),
    durations,
    sizes,
    st.sampled_from(["unlimited", "old", "new", "file", "memory", "limits", "workqueue", "s2"]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-(10**1000), max_value=10**1000),
    st.sampled_from([0, 1, 5, 64, 65, -1, 2**31, 2**63 - 1, 2**63, 2**64]),
    st.floats(),
    st.booleans(),
    st.datetimes(
        timezones=st.sampled_from([None, UTC, timezone(timedelta(hours=-5, minutes=-30))])
    ),
    st.dates(),
    st.times(),
    subjects,
)
keys = st.one_of(st.sampled_from(ALL_FIELD_KEYS), st.text(max_size=8))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=10,
)
field_tables = st.dictionaries(keys, values, max_size=6)
resource_sections = st.dictionaries(
    st.one_of(st.sampled_from(NAMES), st.text(max_size=10)),
    st.one_of(field_tables, field_tables, values),
    max_size=4,
)
settings_tables = st.dictionaries(
    st.one_of(st.sampled_from(SETTINGS_KEYS), st.text(max_size=8)), values, max_size=5
)
documents = st.fixed_dictionaries(
    {},
    optional={
        "nats": st.one_of(settings_tables, values),
        "watchdog": st.one_of(settings_tables, values),
        **{section: st.one_of(resource_sections, values) for section in SECTION.values()},
        "extra": values,
    },
)


# --- the property -----------------------------------------------------------------------


@contextlib.contextmanager
def scratch_file() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp) / "watchdog.toml"


def config_or_problems(path: str, doc: dict[str, Any] | None = None) -> Config | list[str]:
    """load(path) (or parse(doc, path)): the Config, or the ConfigError's problem lines.
    Any other exception propagates and fails the calling test."""
    try:
        return load(path) if doc is None else parse(doc, path)
    except ConfigError as exc:
        return exc.problems


def assert_loads_or_explains(path: Path, doc: dict[str, Any] | None = None) -> Config | None:
    """The outcome is a Config with resources, or problem lines that all start with the path."""
    outcome = config_or_problems(str(path), doc)
    if isinstance(outcome, Config):
        assert outcome.resources
        return outcome
    assert outcome, "a ConfigError must carry at least one problem"
    for line in outcome:
        assert line.startswith(f"{path}: "), line
    return None


@given(documents)
@FUZZ
def test_random_documents_parse_or_explain(doc: dict[str, Any]) -> None:
    """parse() on any decoded document returns a Config or a path-prefixed ConfigError."""
    assert_loads_or_explains(Path("/fuzz/watchdog.toml"), doc)


@given(documents)
@FUZZ
def test_random_toml_files_load_or_explain(doc: dict[str, Any]) -> None:
    """Any TOML file built from random nested values loads or fails with a ConfigError."""
    with scratch_file() as path:
        path.write_text(toml_document(doc), encoding="utf-8")
        assert_loads_or_explains(path)


@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
@FUZZ
def test_random_bytes_load_or_explain(raw: bytes) -> None:
    """Arbitrary bytes in the config file load or fail with a ConfigError."""
    with scratch_file() as path:
        path.write_bytes(raw)
        assert_loads_or_explains(path)


# --- mutations of the real config.toml --------------------------------------------------

REPO_LINES = REPO_TEXT.splitlines()
ASSIGNMENTS = [i for i, line in enumerate(REPO_LINES) if " = " in line and line[0] != "#"]


@st.composite
def mutated_repo_text(draw: st.DrawFn) -> str:
    lines = list(REPO_LINES)
    for _ in range(draw(st.integers(min_value=1, max_value=5))):
        op = draw(st.sampled_from(["delete", "duplicate", "replace", "flip", "swap", "insert"]))
        i = draw(st.integers(min_value=0, max_value=len(lines) - 1))
        if op == "delete" and len(lines) > 1:
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "replace":
            lines[i] = draw(st.text(max_size=40))
        elif op == "insert":
            lines.insert(i, draw(st.sampled_from(["[streams.X]", "[kv_buckets.jobs]", "x = 1"])))
        elif op == "flip" and lines[i]:
            j = draw(st.integers(min_value=0, max_value=len(lines[i]) - 1))
            ch = draw(st.characters(codec="utf-8"))
            lines[i] = lines[i][:j] + ch + lines[i][j + 1 :]
        elif op == "swap":
            a, b = draw(st.sampled_from(ASSIGNMENTS)), draw(st.sampled_from(ASSIGNMENTS))
            if a < len(lines) and b < len(lines) and " = " in lines[a] and " = " in lines[b]:
                ka, va = lines[a].split(" = ", 1)
                kb, vb = lines[b].split(" = ", 1)
                lines[a], lines[b] = f"{ka} = {vb}", f"{kb} = {va}"
    return "\n".join(lines) + "\n"


@given(mutated_repo_text())
@settings(max_examples=250, deadline=None)
def test_mutated_repo_config_loads_or_explains(text: str) -> None:
    """The real config.toml with lines deleted, duplicated, replaced, swapped or
    characters flipped loads or fails with a ConfigError."""
    with scratch_file() as path:
        path.write_text(text, encoding="utf-8")
        assert_loads_or_explains(path)


def test_unmutated_repo_text_loads() -> None:
    """The fuzzing baseline (config.toml untouched) loads, so mutations start from valid."""
    with scratch_file() as path:
        path.write_text("\n".join(REPO_LINES) + "\n", encoding="utf-8")
        config = assert_loads_or_explains(path)
    assert config is not None
    assert len(config.resources) == 25


@contextlib.contextmanager
def captured_cli() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Capture stdout/stderr and undo the logging set-up cli.main does."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    nats_level = logging.getLogger("nats").level
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield out, err
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("nats").setLevel(nats_level)


@given(mutated_repo_text())
@settings(max_examples=25, deadline=None)
def test_validate_on_mutated_files_exits_0_or_78(text: str) -> None:
    """`validate` on a mutated config.toml exits 0 or 78 and never prints a traceback."""
    with scratch_file() as path:
        path.write_text(text, encoding="utf-8")
        with captured_cli() as (out, err):
            code = cli.main(["validate", "--config", str(path)])
    assert code in (0, 78), err.getvalue()
    assert "Traceback" not in err.getvalue()
    if code == 0:
        assert out.getvalue().startswith(f"{path}: OK (")
        assert err.getvalue() == ""
    else:
        # Problems are counted by prefix: a key holding a newline splits its line
        # (see test_config.py::test_problem_lines_stay_single_lines).
        assert err.getvalue().startswith(f"config error: {path}: ")


def test_toml_writer_round_trips() -> None:
    """The test's TOML writer produces what tomllib reads back (so fuzz inputs mean
    what they say)."""
    import tomllib

    doc: dict[str, Any] = {
        "top": 'q"uo\\te\n\x00\x7f',
        "nums": [0, -1, 2**70, 1.5, "x", True],
        "when": datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        "day": date(2024, 1, 2),
        "streams": {"S": {"subjects": ["s.>"], "placement": {"tags": ["a"]}}},
    }
    assert tomllib.loads(toml_document(doc)) == doc
