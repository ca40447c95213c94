"""Configs the broker always refuses are caught by `validate`: a duplicate_window
under 100ms, a description over the broker's limit counted in UTF-8 bytes, and
allow_rollup_hdrs with deny_purge. Each limit is checked against a real
nats-server at its boundary, so validate and the broker agree. A broker refusal
(10052) of a create is not worded as a change in place."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from nats.aio.client import Client

from kanade_watchdog.broker.api import Broker
from kanade_watchdog.broker.apply import execute
from kanade_watchdog.config.load import MAX_DESCRIPTION_BYTES, load
from kanade_watchdog.core.plan import Action, decide
from kanade_watchdog.core.result import Result
from kanade_watchdog.model.errors import ERR_IMMUTABLE_FIELD, ConfigError
from kanade_watchdog.model.resources import Kind, Resource

MS = 1_000_000


def validate(tmp_path: Path, body: str) -> list[str]:
    """The problem lines for one stream S declaring `body` ([] when it loads)."""
    path = tmp_path / "watchdog.toml"
    path.write_text('[streams.S]\nsubjects = ["s.>"]\n' + body, encoding="utf-8")
    try:
        load(str(path))
    except ConfigError as exc:
        return exc.problems
    return []


async def broker_refusal(nc: Client, name: str, **fields: object) -> str | None:
    """Create a stream with a raw request: the broker's error text, or None."""
    body = {"name": name, "subjects": [f"{name.lower()}.>"], **fields}
    msg = await nc.request(f"$JS.API.STREAM.CREATE.{name}", json.dumps(body).encode(), timeout=5)
    error = json.loads(msg.data).get("error")
    return None if error is None else f"{error['err_code']}: {error['description']}"


# --- each case: what the file says, what the broker is sent --------------------------

WINDOWS = [(1, '"1ns"'), (99 * MS, '"99ms"'), (100 * MS, '"100ms"'), (101 * MS, '"101ms"')]
DESCRIPTIONS = [
    ("x", 4096),  # 1 byte a character
    ("x", 4097),
    ("\u00e9", 2048),  # 2 bytes: 4096
    ("\u00e9", 2049),
    ("\u20ac", 1365),  # 3 bytes: 4095
    ("\u20ac", 1366),
    ("\U0001f600", 1024),  # 4 bytes: 4096
    ("\U0001f600", 1025),
]
ROLLUP = [(True, True), (True, False), (False, True)]


def test_the_description_limit_is_the_brokers() -> None:
    """The limit validate applies is the 4096 bytes the broker enforces."""
    assert MAX_DESCRIPTION_BYTES == 4096


async def test_duplicate_window_agrees_with_the_broker(tmp_path: Path, client: Client) -> None:
    """A window the broker refuses (under 100ms) is refused by validate, and one it
    accepts loads."""
    for i, (ns, toml) in enumerate(WINDOWS):
        refused = await broker_refusal(client, f"W{i}", duplicate_window=ns)
        lines = validate(tmp_path, f"duplicate_window = {toml}\n")
        assert bool(lines) == bool(refused), (toml, refused, lines)
        if lines:
            assert len(lines) == 1
            assert ": streams.S.duplicate_window: must be at least 100ms" in lines[0]


async def test_description_limit_agrees_with_the_broker(tmp_path: Path, client: Client) -> None:
    """The description limit is in UTF-8 bytes: 2,049 two-byte characters are over
    it although far fewer than 4,096 characters; validate and the broker agree."""
    for i, (char, count) in enumerate(DESCRIPTIONS):
        text = char * count
        refused = await broker_refusal(client, f"D{i}", description=text)
        lines = validate(tmp_path, f"description = {json.dumps(text, ensure_ascii=False)}\n")
        assert bool(lines) == bool(refused), (char, count, refused, lines)
        if lines:
            assert len(lines) == 1
            size = len(text.encode())
            assert f": streams.S.description: {size} bytes in UTF-8, over the broker's " in lines[0]


@pytest.mark.parametrize("kind", ["kv_buckets", "object_stores"])
def test_bucket_descriptions_count_bytes_too(tmp_path: Path, kind: str) -> None:
    """A bucket's description lands on its backing stream: the same byte limit."""
    path = tmp_path / "watchdog.toml"
    path.write_text(f"[{kind}.b]\ndescription = {json.dumps('é' * 2049)}\n")
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert f": {kind}.b.description: 4098 bytes in UTF-8" in info.value.problems[0]


async def test_rollups_with_deny_purge_agree_with_the_broker(
    tmp_path: Path, client: Client
) -> None:
    """allow_rollup_hdrs with deny_purge is refused by the broker and by validate;
    either alone is accepted by both."""
    for i, (rollup, deny) in enumerate(ROLLUP):
        refused = await broker_refusal(client, f"R{i}", allow_rollup_hdrs=rollup, deny_purge=deny)
        body = f"allow_rollup_hdrs = {json.dumps(rollup)}\ndeny_purge = {json.dumps(deny)}\n"
        lines = validate(tmp_path, body)
        assert bool(lines) == bool(refused), (rollup, deny, refused, lines)
        if lines:
            assert len(lines) == 1
            assert ": streams.S.allow_rollup_hdrs: " in lines[0]
            assert "deny_purge" in lines[0]


# --- how a refusal is worded ---------------------------------------------------------


async def test_a_refused_create_is_not_worded_as_a_change_in_place(client: Client) -> None:
    """A create the broker refuses with 10052 says the broker refuses the config,
    with the broker's reason, not that a field cannot change in place."""
    resource = Resource(
        kind=Kind.STREAM,
        name="R",
        declared={"subjects": ("r.>",), "allow_rollup_hdrs": True, "deny_purge": True},
    )
    decision = decide(resource, None, datetime.now(UTC).replace(tzinfo=None))
    assert decision.action is Action.CREATE
    outcome = await execute(Broker(client, timeout=5), decision, [resource], datetime.now())
    assert outcome.result is Result.FAILED
    assert outcome.error is not None
    assert getattr(outcome.error.cause, "err_code", None) == ERR_IMMUTABLE_FIELD
    text = str(outcome.error)
    assert "in place" not in text
    assert "refuses to create it" in text
    assert "roll-ups require the purge permission" in text


async def test_a_refused_update_keeps_the_change_in_place_wording(client: Client) -> None:
    """An update refused with 10052 is still explained as an update the broker will
    not make, with its reason."""
    assert await broker_refusal(client, "U", deny_purge=True) is None
    resource = Resource(
        kind=Kind.STREAM, name="U", declared={"subjects": ("u.>",), "allow_rollup_hdrs": True}
    )
    broker = Broker(client, timeout=5)
    observed = await broker.stream_info("U")
    decision = decide(resource, observed, datetime.now(UTC).replace(tzinfo=None))
    assert decision.action is Action.UPDATE, decision.reason
    outcome = await execute(broker, decision, [resource], datetime.now())
    assert outcome.error is not None
    text = str(outcome.error)
    assert "refuses this update" in text
    assert "in place" in text
    assert "roll-ups require the purge permission" in text
