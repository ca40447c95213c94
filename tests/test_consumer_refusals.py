"""The consumer checks that claim to be the broker's own refusals are: each
config the declaration refuses is refused by a real nats-server too (with the
error code named), so no check invents a rule the broker does not have."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
from nats.aio.client import Client

from kanade_watchdog.config.load import parse
from kanade_watchdog.model.errors import ConfigError
from tests.jsapi import ok, request

S = 1_000_000_000
STREAM = '[streams.S]\nsubjects = ["s.>"]\n'

# (what the declaration says, the same config on the wire, the broker's code)
CASES: list[tuple[str, dict[str, Any], int]] = [
    ("flow_control = true", {"flow_control": True}, 10089),
    ('idle_heartbeat = "5s"', {"idle_heartbeat": 5 * S}, 10088),
    ("rate_limit_bps = 100", {"rate_limit_bps": 100}, 10086),
    ('deliver_subject = "d"\nmax_waiting = 5', {"deliver_subject": "d", "max_waiting": 5}, 10080),
    (
        'deliver_subject = "d"\npriority_groups = ["g"]\npriority_policy = "overflow"',
        {"deliver_subject": "d", "priority_groups": ["g"], "priority_policy": "overflow"},
        10178,
    ),
    ('deliver_policy = "by_start_sequence"', {"deliver_policy": "by_start_sequence"}, 10094),
    ('deliver_policy = "by_start_time"', {"deliver_policy": "by_start_time"}, 10094),
    ("opt_start_seq = 3", {"deliver_policy": "all", "opt_start_seq": 3}, 10094),
    ('filter_subjects = ["s.a", "s.*"]', {"filter_subjects": ["s.a", "s.*"]}, 10138),
    (
        'filter_subject = "s.a"\nfilter_subjects = ["s.b"]',
        {"filter_subject": "s.a", "filter_subjects": ["s.b"]},
        10136,
    ),
    (
        'backoff = ["1s", "2s"]\nmax_deliver = 1',
        {"backoff": [S, 2 * S], "max_deliver": 1},
        10116,
    ),
    (
        'deliver_subject = "d"\nflow_control = true',
        {"deliver_subject": "d", "flow_control": True},
        10108,
    ),
    ('priority_policy = "pinned_client"', {"priority_policy": "pinned_client"}, 10159),
    ('priority_groups = ["a"]', {"priority_groups": ["a"]}, 10196),
    (
        'priority_groups = ["a.b"]\npriority_policy = "overflow"',
        {"priority_groups": ["a.b"], "priority_policy": "overflow"},
        10162,
    ),
    ('deliver_subject = "d.>"', {"deliver_subject": "d.>"}, 10079),
]


@pytest.mark.parametrize(("declared", "wire", "code"), CASES)
async def test_a_refused_declaration_is_refused_by_the_broker(
    client: Client, declared: str, wire: dict[str, Any], code: int
) -> None:
    """The declaration refuses it before any traffic, and the broker refuses it too."""
    with pytest.raises(ConfigError):
        parse(tomllib.loads(f"{STREAM}[consumers.S.c]\n{declared}\n"), "w.toml")
    await ok(client, "$JS.API.STREAM.CREATE.S", {"name": "S", "subjects": ["s.>"]})
    body = {"stream_name": "S", "config": {**wire, "durable_name": "c"}, "action": "create"}
    answer = await request(client, "$JS.API.CONSUMER.CREATE.S.c", body)
    assert answer.get("error", {}).get("err_code") == code, answer


async def test_a_name_with_a_space_is_refused_by_the_broker(client: Client) -> None:
    """A durable name the declaration refuses cannot be created on the broker either."""
    with pytest.raises(ConfigError):
        parse(tomllib.loads(f'{STREAM}[consumers.S."a b"]\n'), "w.toml")
    await ok(client, "$JS.API.STREAM.CREATE.S", {"name": "S", "subjects": ["s.>"]})
    body = {"stream_name": "S", "config": {"durable_name": "a b"}, "action": "create"}
    answer = await request(client, "$JS.API.CONSUMER.CREATE.S", body)
    assert "error" in answer, answer


async def test_backoff_sets_ack_wait_to_its_first_step(client: Client) -> None:
    """Why ack_wait must equal backoff's first step: the broker overwrites it,
    so any other declared value would read as drift forever."""
    await ok(client, "$JS.API.STREAM.CREATE.S", {"name": "S", "subjects": ["s.>"]})
    config = {"durable_name": "c", "backoff": [S], "ack_wait": 30 * S, "max_deliver": 5}
    answer = await ok(
        client,
        "$JS.API.CONSUMER.CREATE.S.c",
        {"stream_name": "S", "config": config, "action": "create"},
    )
    assert answer["config"]["ack_wait"] == S
