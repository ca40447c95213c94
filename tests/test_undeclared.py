"""plan and check report what the broker holds beyond the declaration, as
`? stream FOO: not declared`, counted in --json and check's perfdata; an
`ignore` glob silences the expected ones; nothing undeclared is ever touched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nats.aio.client import Client

from kanade_watchdog.config.load import parse
from kanade_watchdog.model.errors import ConfigError
from tests.helpers_streams import run_cli, watchdog_audit, write_config
from tests.natsserver import NatsServer

DECLARED = '[streams.ORDERS]\nsubjects = ["orders.>"]\n'


async def populate(client: Client) -> None:
    js = client.jetstream()
    await js.add_stream(name="FOREIGN", subjects=["foreign.>"])
    await js.add_stream(name="TMP_1", subjects=["tmp1.>"])
    await js.create_key_value(bucket="cache")


async def test_plan_and_check_list_what_the_file_does_not_declare(
    server: NatsServer, client: Client, tmp_path: Path
) -> None:
    """Three undeclared resources on the broker: plan lists each with its kind,
    exits 0 (report only), --json carries them, check stays OK with a count."""
    config = write_config(tmp_path, server.url, DECLARED)
    assert (await run_cli("apply", config=config)).code == 0
    await populate(client)
    async with watchdog_audit(client) as audit:
        run = await run_cli("plan", config=config)
        assert run.code == 0, run.stdout
        lines = run.stdout.splitlines()
        assert "? stream FOREIGN: not declared" in lines
        assert "? stream TMP_1: not declared" in lines
        assert "? KV bucket cache: not declared" in lines
        assert "3 not declared" in lines[-1]

        doc = json.loads((await run_cli("plan", "--json", config=config)).stdout)
        assert {(u["kind"], u["name"]) for u in doc["undeclared"]} == {
            ("stream", "FOREIGN"),
            ("stream", "TMP_1"),
            ("kv", "cache"),
        }
        check = await run_cli("check", config=config)
        assert check.code == 0, check.stdout
        assert check.stdout.startswith("JETSTREAM OK - 1/1 in sync |")
        assert " undeclared=3 " in check.stdout
        check_doc = json.loads((await run_cli("check", "--json", config=config)).stdout)
        assert check_doc["perfdata"]["undeclared"] == 3
        assert "KV bucket cache" in check_doc["undeclared"]
        await audit.settle()
        assert audit.writes == 0


async def test_ignore_globs_silence_the_expected_ones(
    server: NatsServer, client: Client, tmp_path: Path
) -> None:
    """`ignore` matches a stream name or a bucket name; the rest is still reported."""
    config = write_config(tmp_path, server.url, DECLARED)
    # A top-level key goes before the first table.
    config.write_text('ignore = ["TMP_*", "cache"]\n' + config.read_text())
    assert (await run_cli("apply", config=config)).code == 0
    await populate(client)
    run = await run_cli("plan", config=config)
    assert "? stream FOREIGN: not declared" in run.stdout
    assert "TMP_1" not in run.stdout
    assert "cache" not in run.stdout
    check = await run_cli("check", config=config)
    assert " undeclared=1 " in check.stdout


@pytest.mark.parametrize("value", ["TMP_*", [1], [""], {"a": 1}])
def test_ignore_must_be_a_list_of_patterns(value: object) -> None:
    """A bad `ignore` is one config error naming the key."""
    document = {"ignore": value, "streams": {"A": {"subjects": ["a.>"]}}}
    with pytest.raises(ConfigError) as info:
        parse(document, "x.toml")
    assert info.value.problems[0].startswith("x.toml: ignore: must be a list of name patterns")
