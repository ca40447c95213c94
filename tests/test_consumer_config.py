"""`[consumers.<STREAM>.<DURABLE>]`: each field parses to the JetStream wire
value, and every refusal the broker would make is one line naming the key
path and the value, before any network traffic."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from kanade_watchdog.config.load import load, parse
from kanade_watchdog.model.errors import ConfigError

SEC = 1_000_000_000
BASE = '[streams.S]\nsubjects = ["s.>"]\n'
REPO_CONFIG = Path(__file__).resolve().parent.parent / "config.toml"


def consumers_of(text: str) -> dict[str, dict[str, object]]:
    config = parse(tomllib.loads(text), "w.toml")
    return {c.name: dict(c.declared) for c in config.consumers}


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(tomllib.loads(text), "w.toml")
    return info.value.problems


def test_every_field_parses_to_the_wire_value() -> None:
    """Readable durations and sizes become ns and bytes; names and shapes stay the API's."""
    got = consumers_of(
        BASE
        + """
[consumers.S.pull]
description = "d"
deliver_policy = "by_start_sequence"
opt_start_seq = 7
ack_policy = "explicit"
ack_wait = "1s"
max_deliver = 5
backoff = ["1s", "5s"]
filter_subjects = ["s.a", "s.b.>"]
replay_policy = "instant"
max_waiting = 10
max_ack_pending = "unlimited"
headers_only = true
max_batch = 100
max_expires = "1m"
max_bytes = "1MiB"
inactive_threshold = "7d"
num_replicas = 1
mem_storage = false
metadata = { team = "ops" }
priority_groups = ["g"]
priority_policy = "overflow"
"""
    )
    assert got["S/pull"] == {
        "description": "d",
        "deliver_policy": "by_start_sequence",
        "opt_start_seq": 7,
        "ack_policy": "explicit",
        "ack_wait": SEC,
        "max_deliver": 5,
        "backoff": (SEC, 5 * SEC),
        "filter_subjects": ("s.a", "s.b.>"),
        "replay_policy": "instant",
        "max_waiting": 10,
        "max_ack_pending": -1,
        "headers_only": True,
        "max_batch": 100,
        "max_expires": 60 * SEC,
        "max_bytes": 1024**2,
        "inactive_threshold": 7 * 86400 * SEC,
        "num_replicas": 1,
        "mem_storage": False,
        "metadata": (("team", "ops"),),
        "priority_groups": ("g",),
        "priority_policy": "overflow",
    }


def test_push_fields_and_times() -> None:
    """A push consumer takes its push fields; date-times keep their offset as RFC 3339."""
    got = consumers_of(
        BASE
        + """
[consumers.S.push]
deliver_subject = "deliver.here"
deliver_group = "workers"
flow_control = true
idle_heartbeat = "5s"
rate_limit_bps = "1MiB"
sample_freq = 10
deliver_policy = "by_start_time"
opt_start_time = 2026-01-02T03:04:05Z
pause_until = "2026-02-01T00:00:00+01:00"
"""
    )
    assert got["S/push"]["opt_start_time"] == "2026-01-02T03:04:05Z"
    assert got["S/push"]["pause_until"] == "2026-02-01T00:00:00+01:00"
    assert got["S/push"]["idle_heartbeat"] == 5 * SEC
    assert got["S/push"]["sample_freq"] == "10%"
    assert got["S/push"]["rate_limit_bps"] == 1024**2


def test_a_consumer_on_an_undeclared_stream_is_enough_to_load() -> None:
    """A stream someone else manages may carry declared consumers; nothing else is needed."""
    config = parse(tomllib.loads('[consumers.OTHER.c]\nfilter_subject = "x.y"\n'), "w.toml")
    assert [c.name for c in config.consumers] == ["OTHER/c"]
    assert config.consumers[0].resume is True


def test_bucket_streams_are_checked_against_their_identity_subjects() -> None:
    """A consumer on KV_b filters within `$KV.b.>`; outside it is refused."""
    text = '[kv_buckets.b]\n[consumers.KV_b.ok]\nfilter_subject = "$KV.b.x"\n'
    assert list(consumers_of(text)) == ["KV_b/ok"]
    lines = problems(text + '[consumers.KV_b.bad]\nfilter_subject = "$KV.c.x"\n')
    assert lines == [
        "w.toml: consumers.KV_b.bad.filter_subject: '$KV.c.x' matches none of the "
        "stream's subjects ('$KV.b.>'), got '$KV.c.x'"
    ]


@pytest.mark.parametrize(
    ("table", "key", "reason"),
    [
        # names the broker refuses
        ('[consumers.S."a.b"]\n', 'consumers.S."a.b"', "durable name must be printable"),
        ('[consumers.S."a b"]\n', 'consumers.S."a b"', "durable name must be printable"),
        ('[consumers."S*".c]\n', 'consumers."S*"', "stream name must be printable"),
        ('[consumers.S.c]\ndeliver_group = "a.b"\n', "consumers.S.c.deliver_group", "must be"),
        # filters outside the stream, overlapping, both spellings
        ('[consumers.S.c]\nfilter_subject = "t.>"\n', "consumers.S.c.filter_subject", "none of"),
        (
            '[consumers.S.c]\nfilter_subjects = ["s.a", "s.*"]\n',
            "consumers.S.c.filter_subjects",
            "overlaps",
        ),
        (
            '[consumers.S.c]\nfilter_subject = "s.a"\nfilter_subjects = ["s.b"]\n',
            "consumers.S.c.filter_subjects",
            "not both",
        ),
        ('[consumers.S.c]\nfilter_subject = "s..a"\n', "consumers.S.c.filter_subject", "empty"),
        # push-only fields on a pull consumer, and pull-only ones on a push consumer
        ("[consumers.S.c]\nflow_control = true\n", "consumers.S.c.flow_control", "pull"),
        ('[consumers.S.c]\nidle_heartbeat = "5s"\n', "consumers.S.c.idle_heartbeat", "pull"),
        ('[consumers.S.c]\ndeliver_group = "g"\n', "consumers.S.c.deliver_group", "pull"),
        ("[consumers.S.c]\nrate_limit_bps = 100\n", "consumers.S.c.rate_limit_bps", "pull"),
        (
            '[consumers.S.c]\ndeliver_subject = "d"\nmax_waiting = 5\n',
            "consumers.S.c.max_waiting",
            "push",
        ),
        (
            '[consumers.S.c]\ndeliver_subject = "d.>"\n',
            "consumers.S.c.deliver_subject",
            "wildcards",
        ),
        (
            '[consumers.S.c]\ndeliver_subject = "d"\nflow_control = true\n',
            "consumers.S.c.flow_control",
            "idle_heartbeat",
        ),
        # the deliver policy's start
        (
            '[consumers.S.c]\ndeliver_policy = "by_start_sequence"\n',
            "consumers.S.c.opt_start_seq",
            "required",
        ),
        (
            '[consumers.S.c]\ndeliver_policy = "by_start_time"\n',
            "consumers.S.c.opt_start_time",
            "required",
        ),
        ("[consumers.S.c]\nopt_start_seq = 3\n", "consumers.S.c.opt_start_seq", "only for"),
        (
            '[consumers.S.c]\ndeliver_policy = "by_start_time"\n'
            "opt_start_time = 2026-01-02T03:04:05\n",
            "consumers.S.c.opt_start_time",
            "time zone",
        ),
        ('[consumers.S.c]\ndeliver_policy = "first"\n', "consumers.S.c.deliver_policy", "one of"),
        # values
        ('[consumers.S.c]\nack_wait = "0s"\n', "consumers.S.c.ack_wait", "longer than 0s"),
        ('[consumers.S.c]\nack_wait = "soon"\n', "consumers.S.c.ack_wait", ""),
        ("[consumers.S.c]\nmax_deliver = 0\n", "consumers.S.c.max_deliver", "at least 1"),
        (
            '[consumers.S.c]\nbackoff = ["1s", "2s"]\nmax_deliver = 1\n',
            "consumers.S.c.backoff",
            "max_deliver",
        ),
        (
            '[consumers.S.c]\nbackoff = ["1s"]\nack_wait = "30s"\n',
            "consumers.S.c.ack_wait",
            "first step",
        ),
        ('[consumers.S.c]\nsample_freq = "150%"\n', "consumers.S.c.sample_freq", "percentage"),
        ("[consumers.S.c]\nnum_replicas = 7\n", "consumers.S.c.num_replicas", "0 to 5"),
        (
            '[consumers.S.c]\nmetadata = { "kanade.x" = "1" }\n',
            'consumers.S.c.metadata."kanade.x"',
            "reserved",
        ),
        (
            '[consumers.S.c]\npriority_policy = "pinned_client"\n',
            "consumers.S.c.priority_groups",
            "required",
        ),
        (
            '[consumers.S.c]\npriority_groups = ["a"]\n',
            "consumers.S.c.priority_groups",
            "needs a priority_policy",
        ),
        (
            '[consumers.S.c]\npriority_groups = ["a.b"]\npriority_policy = "overflow"\n',
            "consumers.S.c.priority_groups",
            "group names",
        ),
        ('[consumers.S.c]\nresume = "yes"\n', "consumers.S.c.resume", "true or false"),
        ('[consumers.S.c]\nack_wiat = "1s"\n', "consumers.S.c.ack_wiat", "did you mean 'ack_wait'"),
        ("[consumers.S]\n", "consumers.S", "table of durable consumers"),
        ("[consumers.S]\nc = 1\n", "consumers.S.c", "must be a table"),
        ("consumers = 1\n", "consumers", "must be a table"),
    ],
)
def test_each_error_names_the_key_path(table: str, key: str, reason: str) -> None:
    """Every consumer refusal is one line: `<file>: <key path>: <reason>`."""
    lines = problems(BASE + table if table.startswith("[") else table + BASE)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"w.toml: {key}: "), lines
    assert reason in lines[0]


def test_the_repo_example_loads_when_uncommented(tmp_path: Path) -> None:
    """config.toml's commented consumer is a valid declaration once uncommented,
    and the file itself still declares 25 resources and no consumer."""
    text = REPO_CONFIG.read_text(encoding="utf-8")
    assert len(load(str(REPO_CONFIG)).resources) == 25
    assert load(str(REPO_CONFIG)).consumers == ()
    block = text[text.index("# [consumers.EXEC") :]
    uncommented = re.sub(r"^# ?", "", block, flags=re.MULTILINE)
    path = tmp_path / "w.toml"
    path.write_text(text + "\n" + uncommented, encoding="utf-8")
    (consumer,) = load(str(path)).consumers
    assert consumer.name == "EXEC/agent-commands"
    assert consumer.declared["filter_subjects"] == ("commands.>",)
