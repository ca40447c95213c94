"""Loading and validating the TOML declaration: every error path names the file,
the key path and the bad value; the repo's own config.toml loads as declared;
`validate` maps outcomes to exit codes without a traceback."""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kanade_watchdog import cli
from kanade_watchdog.config.load import (
    MAX_FILE_BYTES,
    MAX_STOP_TIMEOUT,
    STOP_MARGIN,
    UNIT_TIMEOUT_STOP_SEC,
    load,
    parse,
)
from kanade_watchdog.model import exitcodes
from kanade_watchdog.model.errors import ConfigError
from kanade_watchdog.model.resources import Kind
from kanade_watchdog.model.settings import Config, WatchdogSettings
from kanade_watchdog.model.units import parse_duration_ns

REPO_CONFIG = Path(__file__).resolve().parent.parent / "config.toml"

SEC = 1_000_000_000
MIN = 60 * SEC
HOUR = 60 * MIN
DAY = 24 * HOUR
MIB = 1024**2
GIB = 1024**3

# A minimal valid document: the smallest thing `load` accepts.
BASE = '[streams.S]\nsubjects = ["s.>"]\n'


def write(tmp_path: Path, text: str, name: str = "watchdog.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(tmp_path: Path, text: str) -> tuple[str, list[str]]:
    """Load `text` from a file; return (path, problem lines). Fails if it loads."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(str(path))
    return str(path), info.value.problems


def line_for(lines: list[str], path: str, key: str) -> str:
    """The one problem line for `key`, checked to start with `<path>: <key>: `."""
    prefix = f"{path}: {key}: "
    found = [line for line in lines if line.startswith(prefix)]
    assert len(found) == 1, f"expected one line for {key!r} in {lines!r}"
    return found[0]


# --- unknown keys ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('colour = "blue"\n' + BASE, "colour"),
        ('[nats]\nservers_ = ["nats://h:4222"]\n' + BASE, "nats.servers_"),
        ('[watchdog]\nresync_intervall = "30s"\n' + BASE, "watchdog.resync_intervall"),
        (
            '[streams.RESULTS]\nsubjects = ["results.>"]\nmax_age_ = "30d"\n',
            "streams.RESULTS.max_age_",
        ),
        ("[kv_buckets.jobs]\nhistroy = 5\n", "kv_buckets.jobs.histroy"),
        ('[object_stores.scripts]\nttll = "30d"\n', "object_stores.scripts.ttll"),
        ("[kv_buckets.jobs]\nsubjects = ['x.>']\n", "kv_buckets.jobs.subjects"),
        ('[object_stores.scripts]\nhistory = 5\nttl = "1d"\n', "object_stores.scripts.history"),
    ],
    ids=["top", "nats", "watchdog", "stream", "kv", "object-store", "kv-subjects", "obj-history"],
)
def test_unknown_keys_are_errors(tmp_path: Path, text: str, key: str) -> None:
    """A key the schema does not know (a typo) is an error naming its full key path."""
    path, lines = problems_of(tmp_path, text)
    line = line_for(lines, path, key)
    assert "unknown key" in line
    assert "known:" in line


def test_unknown_placement_key_is_an_error(tmp_path: Path) -> None:
    """An unknown key inside a placement table is its own line, at its own key path."""
    path, lines = problems_of(tmp_path, BASE + 'placement = { cluster = "c", zone = "z" }\n')
    assert "unknown key" in line_for(lines, path, "streams.S.placement.zone")
    assert len(lines) == 1


# --- bad values: key path and the value shown ------------------------------------

S = '[streams.S]\nsubjects = ["s.>"]\n'
KV = "[kv_buckets.jobs]\n"
OBJ = "[object_stores.blobs]\n"


BAD_VALUES = [
    (KV + "history = 0\n", "kv_buckets.jobs.history", "got 0"),
    (KV + "history = 65\n", "kv_buckets.jobs.history", "got 65"),
    (KV + "history = true\n", "kv_buckets.jobs.history", "got True"),
    (KV + 'history = "5"\n', "kv_buckets.jobs.history", "got '5'"),
    (KV + "history = 5.0\n", "kv_buckets.jobs.history", "got 5.0"),
    (KV + "max_value_size = '3GiB'\n", "kv_buckets.jobs.max_value_size", "got '3GiB'"),
    (KV + "ttl = -5\n", "kv_buckets.jobs.ttl", "got -5"),
    (KV + "replicas = 0\n", "kv_buckets.jobs.replicas", "got 0"),
    (KV + "replicas = 6\n", "kv_buckets.jobs.replicas", "got 6"),
    (KV + "storage = 'disk'\n", "kv_buckets.jobs.storage", "got 'disk'"),
    (KV + "compression = 'gzip'\n", "kv_buckets.jobs.compression", "got 'gzip'"),
    (KV + "protect = 'yes'\n", "kv_buckets.jobs.protect", "got 'yes'"),
    (S + "max_bytes = -1\n", "streams.S.max_bytes", "got -1"),
    (S + "max_bytes = '-5MiB'\n", "streams.S.max_bytes", "got '-5MiB'"),
    (S + "max_bytes = '5 gigs'\n", "streams.S.max_bytes", "got '5 gigs'"),
    (S + "max_bytes = 1.5\n", "streams.S.max_bytes", "got 1.5"),
    (S + "max_msgs = -3\n", "streams.S.max_msgs", "got -3"),
    (S + "max_msgs = true\n", "streams.S.max_msgs", "got True"),
    (S + "max_msgs_per_subject = 'lots'\n", "streams.S.max_msgs_per_subject", "got 'lots'"),
    (S + "max_msg_size = '3GiB'\n", "streams.S.max_msg_size", "got '3GiB'"),
    (S + "max_age = '90 days'\n", "streams.S.max_age", "got '90 days'"),
    (S + "max_age = -1\n", "streams.S.max_age", "got -1"),
    (S + "max_age = 1.5\n", "streams.S.max_age", "got 1.5"),
    (S + "max_age = true\n", "streams.S.max_age", "got True"),
    (S + "max_age = 9223372037\n", "streams.S.max_age", "got 9223372037"),
    (S + "max_age = '200000d'\n", "streams.S.max_age", "got '200000d'"),
    (S + "duplicate_window = 'soon'\n", "streams.S.duplicate_window", "got 'soon'"),
    (S + "retention = 'forever'\n", "streams.S.retention", "got 'forever'"),
    (S + "storage = 'disk'\n", "streams.S.storage", "got 'disk'"),
    (S + "discard = 'oldest'\n", "streams.S.discard", "got 'oldest'"),
    (S + "num_replicas = 0\n", "streams.S.num_replicas", "got 0"),
    (S + "num_replicas = true\n", "streams.S.num_replicas", "got True"),
    (S + "description = 5\n", "streams.S.description", "got 5"),
    (S + "allow_direct = 'yes'\n", "streams.S.allow_direct", "got 'yes'"),
    (S + "deny_delete = 1\n", "streams.S.deny_delete", "got 1"),
    (S + "metadata = { '_nats.level' = '1' }\n", 'streams.S.metadata."_nats.level"', "_nats.*"),
    (S + "metadata = { owner = 1 }\n", "streams.S.metadata.owner", "got 1"),
    (S + "metadata = 'owner'\n", "streams.S.metadata", "got 'owner'"),
    (S + "placement = 'eu'\n", "streams.S.placement", "got 'eu'"),
    (S + "placement = { tags = [''] }\n", "streams.S.placement", "got {'tags': ['']}"),
    (S + "placement = { cluster = 1 }\n", "streams.S.placement", "got {'cluster': 1}"),
    (S + "protect = 1\n", "streams.S.protect", "got 1"),
    (OBJ + "ttl = 'soon'\n", "object_stores.blobs.ttl", "got 'soon'"),
    (OBJ + "max_bytes = -1\n", "object_stores.blobs.max_bytes", "got -1"),
    (OBJ + "replicas = 9\n", "object_stores.blobs.replicas", "got 9"),
    ("[nats]\nservers = 'localhost:4222'\n" + S, "nats.servers", "'localhost:4222'"),
    ("[nats]\nservers = []\n" + S, "nats.servers", "got []"),
    ("[nats]\nservers = [4222]\n" + S, "nats.servers", "4222"),
    ("[nats]\nconnect_timeout = '0s'\n" + S, "nats.connect_timeout", "got '0s'"),
    ("[nats]\nrequest_timeout = -2\n" + S, "nats.request_timeout", "got -2"),
    ("[nats]\nreconnect_wait = 0.25\n" + S, "nats.reconnect_wait", "got 0.25"),
    ("[nats]\njetstream_domain = 'a.b'\n" + S, "nats.jetstream_domain", "got 'a.b'"),
    ("[nats]\nname = 7\n" + S, "nats.name", "got 7"),
    ("[watchdog]\nadvisories = 'yes'\n" + S, "watchdog.advisories", "got 'yes'"),
    ("[watchdog]\nresync_interval = 0\n" + S, "watchdog.resync_interval", "got 0"),
    ("[watchdog]\nbackoff_max = 'never'\n" + S, "watchdog.backoff_max", "got 'never'"),
    ("nats = 5\n" + S, "nats", "got 5"),
    ("watchdog = 'on'\n" + S, "watchdog", "got 'on'"),
    ("streams = [1, 2]\n", "streams", "got [1, 2]"),
    ("kv_buckets = 'jobs'\n" + S, "kv_buckets", "got 'jobs'"),
    ("[streams]\nX = 5\n", "streams.X", "got 5"),
    ("[kv_buckets]\njobs = 'history 5'\n", "kv_buckets.jobs", "got 'history 5'"),
]


@pytest.mark.parametrize(
    ("text", "key", "shown"), BAD_VALUES, ids=[f"{k}:{s}" for _, k, s in BAD_VALUES]
)
def test_bad_values_name_path_key_and_value(
    tmp_path: Path, text: str, key: str, shown: str
) -> None:
    """A wrong value gives one line `<file>: <key path>: <why>, got <value>`."""
    path, lines = problems_of(tmp_path, text)
    assert line_for(lines, path, key).find(shown) > 0


def test_long_values_are_shortened_in_problem_lines(tmp_path: Path) -> None:
    """A huge bad value is shown truncated, so one problem stays one readable line."""
    path, lines = problems_of(tmp_path, S + f"description = '{'x' * 5000}'\n")
    line = line_for(lines, path, "streams.S.description")
    assert "over the broker's 4096-byte limit" in line
    assert line.endswith("...")
    assert len(line) < len(path) + 200


# --- subjects ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subjects", "shown"),
    [
        ('"s.>"', "got 's.>'"),
        ("[]", "got []"),
        ("[1]", "got 1"),
        ('["a..b"]', "'a..b'"),
        ('["a.>.b"]', "'a.>.b'"),
        ('["a b"]', "'a b'"),
        ('["a.>", "a.>"]', "listed twice"),
    ],
    ids=["string", "empty", "not-str", "empty-token", "gt-not-last", "space", "twice"],
)
def test_bad_subjects_are_reported(tmp_path: Path, subjects: str, shown: str) -> None:
    """Malformed subject lists are refused with the offending subject shown."""
    path, lines = problems_of(tmp_path, f"[streams.S]\nsubjects = {subjects}\n")
    assert shown in line_for(lines, path, "streams.S.subjects")


def test_missing_subjects_is_required(tmp_path: Path) -> None:
    """A stream without `subjects` is refused: the broker needs at least one."""
    path, lines = problems_of(tmp_path, '[streams.S]\nmax_age = "1d"\n')
    assert "is required" in line_for(lines, path, "streams.S.subjects")


# --- names the broker would reject ------------------------------------------------


@pytest.mark.parametrize(
    ("header", "key", "shown"),
    [
        ('[streams."a.b"]\nsubjects = ["x"]\n', 'streams."a.b"', "'a.b'"),
        ('[streams."has space"]\nsubjects = ["x"]\n', 'streams."has space"', "'has space'"),
        ('[streams."a>"]\nsubjects = ["x"]\n', 'streams."a>"', "'a>'"),
        ('[streams.""]\nsubjects = ["x"]\n', 'streams.""', "''"),
        ('[kv_buckets."bad name!"]\n', 'kv_buckets."bad name!"', "'bad name!'"),
        ('[kv_buckets."a.b"]\n', 'kv_buckets."a.b"', "'a.b'"),
        ('[object_stores."x/y"]\n', 'object_stores."x/y"', "'x/y'"),
    ],
    ids=["dot", "space", "wildcard", "empty", "kv-bang", "kv-dot", "obj-slash"],
)
def test_names_the_broker_would_reject(tmp_path: Path, header: str, key: str, shown: str) -> None:
    """A stream or bucket name the broker refuses is a config error, with the name shown."""
    path, lines = problems_of(tmp_path, header)
    line = line_for(lines, path, key)
    assert "name " in line
    assert f"got {shown}" in line


@pytest.mark.parametrize(
    ("text", "key", "taken_by", "stream"),
    [
        (
            '[streams.KV_jobs]\nsubjects = ["jobs.>"]\n[kv_buckets.jobs]\n',
            "kv_buckets.jobs",
            "streams.KV_jobs",
            "KV_jobs",
        ),
        (
            '[streams.OBJ_blobs]\nsubjects = ["b.>"]\n[object_stores.blobs]\n',
            "object_stores.blobs",
            "streams.OBJ_blobs",
            "OBJ_blobs",
        ),
    ],
    ids=["kv", "object-store"],
)
def test_stream_names_are_unique_across_kinds(
    tmp_path: Path, text: str, key: str, taken_by: str, stream: str
) -> None:
    """A bucket whose backing stream name is already a declared stream is refused."""
    path, lines = problems_of(tmp_path, text)
    line = line_for(lines, path, key)
    assert f"{stream!r}" in line
    assert taken_by in line


# --- subjects overlapping across declared streams ---------------------------------


@pytest.mark.parametrize(
    ("text", "key", "mine", "theirs"),
    [
        (
            '[streams.A]\nsubjects = ["a.>"]\n[streams.B]\nsubjects = ["a.b"]\n',
            "streams.B.subjects",
            "a.b",
            "a.>",
        ),
        (
            '[streams.A]\nsubjects = ["a.*"]\n[streams.B]\nsubjects = ["x", "a.>"]\n',
            "streams.B.subjects",
            "a.>",
            "a.*",
        ),
        (
            '[streams.ALL_KV]\nsubjects = ["$KV.>"]\n[kv_buckets.jobs]\n',
            "kv_buckets.jobs.subjects",
            "$KV.jobs.>",
            "$KV.>",
        ),
        (
            '[streams.CHUNKS]\nsubjects = ["$O.*.C.>"]\n[object_stores.blobs]\n',
            "object_stores.blobs.subjects",
            "$O.blobs.C.>",
            "$O.*.C.>",
        ),
    ],
    ids=["stream-stream", "second-subject", "stream-vs-kv", "stream-vs-object-store"],
)
def test_overlapping_subjects_between_streams(
    tmp_path: Path, text: str, key: str, mine: str, theirs: str
) -> None:
    """Two declared streams claiming a common subject are refused (the broker says 10065)."""
    path, lines = problems_of(tmp_path, text)
    line = line_for(lines, path, key)
    assert f"{mine!r} overlaps {theirs!r}" in line


def test_disjoint_subjects_and_similar_buckets_load(tmp_path: Path) -> None:
    """Subjects that only look alike (a.* vs a.b.c, jobs vs jobs2) are not an overlap."""
    text = (
        '[streams.A]\nsubjects = ["a.*"]\n[streams.B]\nsubjects = ["a.b.c"]\n'
        "[kv_buckets.jobs]\n[kv_buckets.jobs2]\n[object_stores.jobs]\n"
    )
    config = load(str(write(tmp_path, text)))
    assert [r.stream for r in config.resources] == ["A", "B", "KV_jobs", "KV_jobs2", "OBJ_jobs"]


def test_overlapping_subjects_within_one_stream(tmp_path: Path) -> None:
    """One stream listing overlapping subjects is refused, as the broker would refuse it."""
    path, lines = problems_of(tmp_path, '[streams.A]\nsubjects = ["a.>", "a.b"]\n')
    assert "'a.b'" in line_for(lines, path, "streams.A.subjects")


@pytest.mark.parametrize("subject", [">", "$JS.API.>", "$SYS.>"])
def test_reserved_subjects_are_refused(tmp_path: Path, subject: str) -> None:
    """A subject that the broker reserves for its own APIs is a config error."""
    path, lines = problems_of(tmp_path, f'[streams.A]\nsubjects = ["{subject}"]\n')
    assert repr(subject) in line_for(lines, path, "streams.A.subjects")


# --- limits the broker would refuse or silently rewrite ---------------------------


def test_duplicate_window_longer_than_max_age_is_refused(tmp_path: Path) -> None:
    """A dedupe window longer than the stream's max_age is refused (the broker would)."""
    text = S + 'max_age = "10m"\nduplicate_window = "20m"\n'
    path, lines = problems_of(tmp_path, text)
    assert "max_age" in line_for(lines, path, "streams.S.duplicate_window")


def test_duplicate_window_problem_shows_the_values(tmp_path: Path) -> None:
    """The duplicate_window/max_age problem line shows the window that is too long."""
    text = S + 'max_age = "10m"\nduplicate_window = "20m"\n'
    path, lines = problems_of(tmp_path, text)
    assert "20m" in line_for(lines, path, "streams.S.duplicate_window")


@pytest.mark.parametrize(
    ("window", "age"), [('"10m"', '"10m"'), ('"2m"', '"1h"'), ('"1h"', "0")], ids=str
)
def test_duplicate_window_within_max_age_loads(tmp_path: Path, window: str, age: str) -> None:
    """A window no longer than max_age (or with no max_age) is accepted."""
    config = load(str(write(tmp_path, S + f"max_age = {age}\nduplicate_window = {window}\n")))
    declared = config.resources[0].declared
    assert declared["duplicate_window"] <= declared["max_age"] or declared["max_age"] == 0


@pytest.mark.parametrize(
    "text", [S + 'max_age = "1ms"\n', KV + 'ttl = "50ms"\n'], ids=["stream", "kv"]
)
def test_sub_100ms_max_age_is_refused(tmp_path: Path, text: str) -> None:
    """A max_age/ttl the broker refuses (non-zero, under 100ms) is a config error."""
    problems_of(tmp_path, text)


# --- metadata the watchdog's own marker writes -------------------------------------


def marker_keys() -> list[str]:
    """The keys the marker writes on every write, read from the marker itself, so a
    key added to it later is covered too."""
    from kanade_watchdog.core.desired import marker
    from kanade_watchdog.model.resources import Resource

    keys = list(marker(Resource(kind=Kind.STREAM, name="S", declared={"subjects": ("s.>",)})))
    assert keys, "the marker writes at least one key"
    return keys


@pytest.mark.parametrize("key", [*marker_keys(), "kanade.writer", "kanade.anything"])
def test_metadata_keys_of_the_marker_are_refused(tmp_path: Path, key: str) -> None:
    """A declared metadata key under `kanade.` (the marker's own) is one config error
    naming its key path: declaring it would make every write overwrite the other."""
    text = S + f'metadata = {{ owner = "ops", "{key}" = "2" }}\n'
    path, lines = problems_of(tmp_path, text)
    assert len(lines) == 1, lines
    line = line_for(lines, path, f'streams.S.metadata."{key}"')
    assert "kanade." in line.split(": ", 2)[2]
    assert line.endswith("got '2'")


def test_metadata_keys_near_the_marker_load(tmp_path: Path) -> None:
    """Keys that only look like the marker's (no dot, other case, inside) are the
    operator's own and load."""
    text = S + 'metadata = { kanade = "1", "Kanade.x" = "2", "team.kanade.y" = "3" }\n'
    config = load(str(write(tmp_path, text)))
    assert dict(config.resources[0].declared["metadata"]) == {
        "kanade": "1",
        "Kanade.x": "2",
        "team.kanade.y": "3",
    }


# --- several problems at once -----------------------------------------------------


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    """Every problem in the file is reported in one go, one line each, each with the path."""
    text = (
        'typo = 1\n[nats]\nservers = "localhost"\n[watchdog]\nadvisories = "yes"\n'
        '[streams.RESULTS]\nsubjects = ["results.>"]\nmax_age_ = "30d"\nmax_bytes = -1\n'
        "[kv_buckets.jobs]\nhistory = 65\n"
        '[kv_buckets."bad name!"]\n'
        '[object_stores.blobs]\nttl = "soon"\n'
    )
    path, lines = problems_of(tmp_path, text)
    keys = [
        "typo",
        "nats.servers",
        "watchdog.advisories",
        "streams.RESULTS.max_age_",
        "streams.RESULTS.max_bytes",
        "kv_buckets.jobs.history",
        'kv_buckets."bad name!"',
        "object_stores.blobs.ttl",
    ]
    for key in keys:
        line_for(lines, path, key)
    assert len(lines) == len(keys)
    assert all("\n" not in line for line in lines)
    assert all(line.startswith(f"{path}: ") for line in lines)


@pytest.mark.parametrize(
    "text",
    [
        '[nats]\n"a\\nb" = 1\n' + BASE,
        '[streams."a\\nb"]\nsubjects = ["x"]\n',
        '[kv_buckets.jobs]\n"x\\nconfig error: forged" = 1\n',
    ],
    ids=["settings-key", "stream-name", "forged-line"],
)
def test_problem_lines_stay_single_lines(tmp_path: Path, text: str) -> None:
    """A key holding control characters is shown escaped, so each problem stays one line."""
    _, lines = problems_of(tmp_path, text)
    assert all("\n" not in line for line in lines)


def test_config_error_message_is_the_problem_lines(tmp_path: Path) -> None:
    """str(ConfigError) is the problem lines joined, so a plain print shows them all."""
    path = write(tmp_path, KV + "history = 0\nreplicas = 0\n")
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert len(info.value.problems) == 2
    assert str(info.value) == "\n".join(info.value.problems)


def test_no_resources_is_an_error(tmp_path: Path) -> None:
    """A file with settings but no stream, bucket or store is refused."""
    path, lines = problems_of(tmp_path, '[nats]\nservers = ["nats://h:4222"]\n')
    assert "no resources" in line_for(lines, path, "streams")


def test_empty_sections_are_not_resources(tmp_path: Path) -> None:
    """Empty [streams]/[kv_buckets] tables declare nothing, which is refused."""
    _, lines = problems_of(tmp_path, "[streams]\n[kv_buckets]\n[object_stores]\n")
    assert len(lines) == 1
    assert "no resources" in lines[0]


# --- file-level failures ----------------------------------------------------------


def only_line(tmp_path: Path, path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert len(info.value.problems) == 1
    line = info.value.problems[0]
    assert line.startswith(f"{path}: ")
    return line


def test_missing_file(tmp_path: Path) -> None:
    """A config path that does not exist is one 'no such file' line."""
    assert "no such file" in only_line(tmp_path, tmp_path / "nope.toml")


def test_missing_directory(tmp_path: Path) -> None:
    """A config path under a directory that does not exist is one 'no such file' line."""
    assert "no such file" in only_line(tmp_path, tmp_path / "nodir" / "nope.toml")


def test_path_through_a_file_is_a_read_error(tmp_path: Path) -> None:
    """A path that treats a file as a directory is one 'cannot read' line."""
    blocker = write(tmp_path, BASE)
    assert "cannot read" in only_line(tmp_path, blocker / "x.toml")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    """A directory given as the config file is one 'is a directory' line."""
    assert "is a directory" in only_line(tmp_path, tmp_path)


@pytest.mark.parametrize("content", ["", "\n\n   \n\t\n"], ids=["zero-bytes", "whitespace"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    """An empty (or blank) file is one 'file is empty' line, not 'no resources'."""
    assert "file is empty" in only_line(tmp_path, write(tmp_path, content))


def test_non_utf8_file(tmp_path: Path) -> None:
    """A file that is not UTF-8 is one line naming the first bad byte's offset."""
    path = tmp_path / "latin1.toml"
    good = BASE.encode() + b"description = '"
    path.write_bytes(good + b"\xe9t\xe9'\n")
    line = only_line(tmp_path, path)
    assert "not UTF-8" in line
    assert f"byte {len(good)}" in line


def test_file_over_the_size_limit(tmp_path: Path) -> None:
    """A file larger than the limit is refused before being read, with its size."""
    path = tmp_path / "huge.toml"
    with open(path, "wb") as fh:
        fh.write(BASE.encode())
        fh.truncate(MAX_FILE_BYTES + 1)
    line = only_line(tmp_path, path)
    assert f"{MAX_FILE_BYTES + 1} bytes" in line
    assert str(MAX_FILE_BYTES) in line


def test_file_at_the_size_limit_is_read(tmp_path: Path) -> None:
    """A file of exactly the limit is read and validated (padding with a comment)."""
    path = tmp_path / "big.toml"
    head = BASE + "# "
    path.write_text(head + "x" * (MAX_FILE_BYTES - len(head)))
    assert path.stat().st_size == MAX_FILE_BYTES
    assert len(load(str(path)).resources) == 1


@pytest.mark.parametrize(
    "text",
    [
        "[streams.S\nsubjects = ['s.>']\n",
        "[streams.S]\nsubjects = ['s.>'\n",
        "[streams.S]\nsubjects = ['s.>']\nmax_age = 90d\n",
        "[streams.S]\nsubjects = ['s.>']\n= 5\n",
        "\ufeff" + BASE,
    ],
    ids=["header", "array", "bare-value", "no-key", "bom"],
)
def test_invalid_toml_syntax(tmp_path: Path, text: str) -> None:
    """A TOML syntax error is one line with the parser's message and position."""
    line = only_line(tmp_path, write(tmp_path, text))
    assert "TOML syntax" in line
    assert re.search(r"\(at (line \d+, column \d+|end of document)\)", line)


@pytest.mark.parametrize(
    "text",
    [
        BASE + 'subjects = ["t.>"]\n',
        BASE + "[streams.S]\nmax_age = 5\n",
        "[kv_buckets.jobs]\nhistory = 5\nhistory = 1\n",
    ],
    ids=["key", "table", "kv-key"],
)
def test_duplicate_toml_keys(tmp_path: Path, text: str) -> None:
    """A key or table written twice is a syntax error, never last-one-wins."""
    assert "TOML syntax" in only_line(tmp_path, write(tmp_path, text))


def test_deeply_nested_toml(tmp_path: Path) -> None:
    """Pathologically nested TOML is one syntax line, not a RecursionError."""
    depth = 5000
    text = BASE + "placement = " + "[" * depth + "]" * depth + "\n"
    line = only_line(tmp_path, write(tmp_path, text))
    assert "TOML syntax" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file anyway")
def test_unreadable_file(tmp_path: Path) -> None:
    """A file the process may not read is one 'permission denied' line."""
    path = write(tmp_path, BASE)
    path.chmod(0)
    try:
        assert "permission denied" in only_line(tmp_path, path)
    finally:
        path.chmod(0o600)


# --- huge integers ----------------------------------------------------------------


def test_huge_decimal_integer_is_a_config_error(tmp_path: Path) -> None:
    """A 5000-digit decimal integer is a ConfigError, not an escaping ValueError."""
    problems_of(tmp_path, KV + "history = " + "9" * 5000 + "\n")


def test_huge_hex_integer_is_a_config_error(tmp_path: Path) -> None:
    """A hex integer too large to print in decimal is reported as a problem line."""
    path, lines = problems_of(tmp_path, KV + "history = 0x" + "F" * 5000 + "\n")
    assert "got a 20000-bit integer" in line_for(lines, path, "kv_buckets.jobs.history")


# --- what a valid file turns into -------------------------------------------------


def test_values_are_normalized_to_broker_units(tmp_path: Path) -> None:
    """Declared values are stored in the broker's units (ns, bytes, -1 for unlimited)."""
    text = (
        '[streams.S]\nsubjects = ["s.>", "t.*"]\nmax_age = 3600\nmax_bytes = "unlimited"\n'
        'max_msgs = "unlimited"\nmax_msg_size = "1MiB"\nduplicate_window = "90s"\n'
        "placement = { tags = ['b', 'a'], cluster = 'c1' }\nmetadata = { owner = 'ops' }\n"
        "protect = true\n"
        '[kv_buckets.jobs]\nttl = "1h"\nmax_value_size = 1024\nreplicas = 3\n'
    )
    config = load(str(write(tmp_path, text)))
    stream, kv = config.resources
    assert stream.protect is True
    assert kv.protect is False
    assert dict(stream.declared) == {
        "subjects": ("s.>", "t.*"),
        "max_age": HOUR,
        "max_bytes": -1,
        "max_msgs": -1,
        "max_msg_size": MIB,
        "duplicate_window": 90 * SEC,
        "placement": (("cluster", "c1"), ("tags", ("a", "b"))),
        "metadata": (("owner", "ops"),),
    }
    assert dict(kv.declared) == {"ttl": HOUR, "max_value_size": 1024, "replicas": 3}


def test_settings_sections_are_parsed(tmp_path: Path) -> None:
    """[nats] and [watchdog] durations become seconds; a single server URL is a list."""
    text = (
        '[nats]\nservers = "nats://a:4222"\nconnect_timeout = "500ms"\njetstream_domain = "hub"\n'
        '[watchdog]\nresync_interval = "1m"\nresync_jitter = 0\nadvisories = false\n' + BASE
    )
    config = load(str(write(tmp_path, text)))
    assert config.nats.servers == ("nats://a:4222",)
    assert config.nats.connect_timeout == 0.5
    assert config.nats.jetstream_domain == "hub"
    assert config.watchdog.resync_interval == 60.0
    assert config.watchdog.resync_jitter == 0.0
    assert config.watchdog.advisories is False


def test_parse_takes_a_decoded_document() -> None:
    """parse() validates an in-memory document and names the given path in problems."""
    doc: dict[str, Any] = {"kv_buckets": {"jobs": {"history": 0}}}
    with pytest.raises(ConfigError) as info:
        parse(doc, "<memory>")
    assert info.value.problems[0].startswith("<memory>: kv_buckets.jobs.history: ")


# --- stop_timeout and the shipped unit ------------------------------------------------

UNIT = Path(__file__).resolve().parent.parent / "packaging" / "systemd" / "kanade-watchdog.service"


def unit_timeout_stop_seconds() -> float:
    """TimeoutStopSec= of the shipped unit, in seconds."""
    found = re.findall(r"^TimeoutStopSec=(\S+)\s*$", UNIT.read_text(), re.MULTILINE)
    assert len(found) == 1, found
    return parse_duration_ns(found[0]) / SEC


def test_stop_timeout_limit_stays_below_the_units_timeout_stop() -> None:
    """The largest stop_timeout validate accepts leaves the margin it promises below
    the shipped unit's TimeoutStopSec, read from the unit file itself."""
    unit = unit_timeout_stop_seconds()
    assert unit == UNIT_TIMEOUT_STOP_SEC, "update UNIT_TIMEOUT_STOP_SEC with the unit"
    assert unit - STOP_MARGIN == MAX_STOP_TIMEOUT
    assert 0 < MAX_STOP_TIMEOUT < unit
    assert WatchdogSettings().stop_timeout <= MAX_STOP_TIMEOUT


@pytest.mark.parametrize("value", ['"26s"', '"120s"', "90"], ids=str)
def test_stop_timeout_past_the_units_limit_is_refused(tmp_path: Path, value: str) -> None:
    """A stop_timeout the unit would cut short by SIGKILL is refused, and the line
    says why (the unit's TimeoutStopSec and the margin)."""
    path, lines = problems_of(tmp_path, f"[watchdog]\nstop_timeout = {value}\n" + BASE)
    line = line_for(lines, path, "watchdog.stop_timeout")
    assert f"must be at most {MAX_STOP_TIMEOUT:g}s" in line
    assert f"TimeoutStopSec={UNIT_TIMEOUT_STOP_SEC:g}s" in line
    assert line.endswith(f"got {value.replace(chr(34), chr(39))}")


@pytest.mark.parametrize(("value", "seconds"), [('"25s"', 25.0), ('"500ms"', 0.5), ("3", 3.0)])
def test_stop_timeout_within_the_limit_loads(tmp_path: Path, value: str, seconds: float) -> None:
    """Up to the limit, stop_timeout loads as given."""
    config = load(str(write(tmp_path, f"[watchdog]\nstop_timeout = {value}\n" + BASE)))
    assert config.watchdog.stop_timeout == seconds


# --- the repo's own config.toml ---------------------------------------------------


@pytest.fixture(scope="module")
def repo_config() -> Config:
    return load(str(REPO_CONFIG))


def test_repo_config_counts(repo_config: Config) -> None:
    """config.toml declares exactly 7 streams, 13 KV buckets and 5 object stores."""
    kinds = [r.kind for r in repo_config.resources]
    assert kinds.count(Kind.STREAM) == 7
    assert kinds.count(Kind.KV) == 13
    assert kinds.count(Kind.OBJECT_STORE) == 5
    assert len(repo_config.by_stream()) == 25


REPO_STREAMS: dict[str, dict[str, Any]] = {
    "INVENTORY": {"subjects": ("inventory.>",), "max_age": 90 * DAY, "max_bytes": 1 * GIB},
    "RESULTS": {"subjects": ("results.>",), "max_age": 30 * DAY, "max_bytes": 2 * GIB},
    "EXEC": {
        "subjects": ("commands.>",),
        "max_msgs_per_subject": 1,
        "max_age": 7 * DAY,
        "max_bytes": 64 * MIB,
    },
    "EVENTS": {"subjects": ("events.>",), "max_age": 7 * DAY, "max_bytes": 256 * MIB},
    "AUDIT": {"subjects": ("audit.>",), "max_age": 90 * DAY, "max_bytes": 512 * MIB},
    "OBS_EVENTS": {"subjects": ("obs.>",), "max_age": 90 * DAY, "max_bytes": 512 * MIB},
    "NOTIFICATIONS": {
        "subjects": ("notifications.>",),
        "max_age": 90 * DAY,
        "max_bytes": 512 * MIB,
    },
}
REPO_KV_HISTORY = {
    "script_current": 5,
    "script_status": 5,
    "agents_state": 1,
    "agent_config": 1,
    "agent_groups": 1,
    "group_contacts": 5,
    "schedules": 5,
    "jobs": 5,
    "fleet_config": 1,
    "server_settings": 1,
    "notifications_read": 1,
    "jobs_yaml": 5,
    "schedules_yaml": 5,
}
REPO_OBJECT_STORES: dict[str, dict[str, Any]] = {
    "agent_releases": {},
    "app_packages": {},
    "scripts": {},
    "result_output": {"ttl": 30 * DAY, "max_bytes": 1 * GIB},
    "collections": {"ttl": 30 * DAY, "max_bytes": 5 * GIB},
}


def test_repo_config_streams(repo_config: Config) -> None:
    """Every stream in config.toml carries the seed's subjects, age, byte cap, per-subject
    limit and discard old, in declaration order."""
    streams = {r.name: dict(r.declared) for r in repo_config.resources if r.kind is Kind.STREAM}
    assert list(streams) == list(REPO_STREAMS)
    for name, want in REPO_STREAMS.items():
        got = streams[name]
        assert {key: got.get(key) for key in want} == want, name
        assert got.get("discard") == "old", name
        assert got.get("max_msgs_per_subject", -1) == want.get("max_msgs_per_subject", -1), name


def test_repo_config_kv_buckets(repo_config: Config) -> None:
    """Every KV bucket in config.toml has the seed's history, uncapped and without a ttl."""
    buckets = {r.name: dict(r.declared) for r in repo_config.resources if r.kind is Kind.KV}
    assert {name: d.get("history") for name, d in buckets.items()} == REPO_KV_HISTORY
    for name, declared in buckets.items():
        assert declared.get("ttl", 0) == 0, name
        assert declared.get("max_bytes", -1) == -1, name


def test_repo_config_object_stores(repo_config: Config) -> None:
    """Object stores are uncapped except result_output (30d, 1GiB) and collections (30d, 5GiB)."""
    stores = {
        r.name: dict(r.declared) for r in repo_config.resources if r.kind is Kind.OBJECT_STORE
    }
    assert list(stores) == list(REPO_OBJECT_STORES)
    for name, want in REPO_OBJECT_STORES.items():
        got = stores[name]
        assert got.get("ttl", 0) == want.get("ttl", 0), name
        assert got.get("max_bytes", -1) == want.get("max_bytes", -1), name


def test_repo_config_settings(repo_config: Config) -> None:
    """config.toml's [nats] and [watchdog] values load as written (durations in seconds)."""
    raw = tomllib.loads(REPO_CONFIG.read_text(encoding="utf-8"))
    assert repo_config.nats.servers == tuple(raw["nats"]["servers"])
    for section, settings in (("nats", repo_config.nats), ("watchdog", repo_config.watchdog)):
        for key, value in raw[section].items():
            got = getattr(settings, key)
            if isinstance(value, str) and key not in ("name", "servers", "jetstream_domain"):
                assert got == parse_duration_ns(value) / SEC, f"{section}.{key}"
            elif key != "servers":
                assert got == value, f"{section}.{key}"
    assert not any(r.protect for r in repo_config.resources)


# --- `kanade-watchdog validate` ---------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """cli.main reconfigures the root logger; put it back for the tests that follow."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    nats_level = logging.getLogger("nats").level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("nats").setLevel(nats_level)


@pytest.mark.usefixtures("restore_logging")
def test_validate_repo_config_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    """`validate` on the repo's config exits 0 and reports the resource count."""
    code = cli.main(["validate", "--config", str(REPO_CONFIG)])
    out, err = capsys.readouterr()
    assert code == exitcodes.OK == 0
    assert out.strip() == f"{REPO_CONFIG}: OK (25 resources)"
    assert err == ""


@pytest.mark.usefixtures("restore_logging")
def test_validate_bad_config_exits_78_one_line_per_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`validate` on a bad config exits 78 with one stderr line per problem, no traceback."""
    text = (
        REPO_CONFIG.read_text()
        .replace("history = 5", "histroy = 5", 1)
        .replace('max_age = "30d"', 'max_age = "30 days"', 1)
        .replace('max_bytes = "5GiB"', "max_bytes = -5", 1)
    )
    path = write(tmp_path, text)
    code = cli.main(["validate", "--config", str(path)])
    out, err = capsys.readouterr()
    assert code == exitcodes.CONFIG == 78
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"config error: {path}: ") for line in lines)
    assert "Traceback" not in err
    assert any("kv_buckets.script_current.histroy" in line for line in lines)
    assert any("streams.RESULTS.max_age" in line and "'30 days'" in line for line in lines)
    assert any("object_stores.collections.max_bytes" in line and "-5" in line for line in lines)


@pytest.mark.usefixtures("restore_logging")
def test_validate_missing_file_exits_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`validate` on a missing file exits 78 with a single line on stderr."""
    path = tmp_path / "absent.toml"
    code = cli.main(["validate", "--config", str(path)])
    _, err = capsys.readouterr()
    assert code == 78
    assert err.splitlines() == [f"config error: {path}: no such file"]


@pytest.mark.usefixtures("restore_logging")
def test_validate_huge_integer_exits_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`validate` on a file with an absurdly long integer exits 78 (bad config), not 70."""
    path = write(tmp_path, KV + "history = " + "9" * 5000 + "\n")
    code = cli.main(["validate", "--config", str(path)])
    _, err = capsys.readouterr()
    assert "Traceback" not in err
    assert code == 78
