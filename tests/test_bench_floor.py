"""The benchmark's floor stands alone and heals, and `bench.run` reports a
heal that never comes as a failed row instead of aborting.

Against a real nats-server; no speed is asserted here (docs/BENCHMARKS.md
holds the figures).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from bench import floor, floor_configs
from bench import run as bench_run
from kanade_watchdog.config import load as cfg
from kanade_watchdog.model.settings import Config
from tests.conftest import REPO, config_for
from tests.natsserver import NatsServer


def test_floor_data_is_what_the_project_creates() -> None:
    """floor_streams.json holds the project's own create configs for the
    repository's config.toml (ownership marker aside), so the floor cannot
    silently drift from what the watchdog creates."""
    checked_in = json.loads(floor_configs.DATA.read_text())
    assert checked_in == floor_configs.expected(), (
        "bench/floor_streams.json is stale: run .venv/bin/python -m bench.floor_configs"
    )
    assert len(checked_in) == 25


def test_floor_imports_nothing_from_the_project() -> None:
    """The floor measures the floor, not the project: importing it loads no
    kanade_watchdog module."""
    probe = (
        "import sys, bench.floor; "
        "print(sorted(m for m in sys.modules if m.startswith('kanade_watchdog')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


async def _create_all(nc: Client) -> None:
    for config in floor.load_configs().values():
        assert await floor.recreate(nc, config) is None


async def _info(nc: Client, stream: str) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(
        (await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=2)).data
    )
    return answer


async def test_floor_sees_its_own_streams_as_in_sync(client: Client) -> None:
    """Every stream the floor creates reads back as not drifted, so the
    UPDATED advisory of its own revert ends in one read, not a loop."""
    await _create_all(client)
    for name, config in floor.load_configs().items():
        observed = (await _info(client, name))["config"]
        assert not floor.drifted(observed, config), name
        assert floor.drifted({**observed, "max_bytes": 1}, config) is ("max_bytes" in config)


async def test_floor_retries_a_refused_recreate(client: Client) -> None:
    """A re-create the broker refuses for a while (here: another stream holds
    the bucket's subjects) is retried until it is accepted."""
    config = floor.load_configs()["KV_jobs"]
    blocker = {"name": "BLOCKER", "subjects": config["subjects"], "storage": "memory"}
    answer = json.loads(
        (
            await client.request(
                "$JS.API.STREAM.CREATE.BLOCKER", json.dumps(blocker).encode(), timeout=2
            )
        ).data
    )
    assert "error" not in answer, answer
    attempt = asyncio.create_task(floor.recreate(client, config))
    await asyncio.sleep(0.05)
    assert not attempt.done()
    await client.request("$JS.API.STREAM.DELETE.BLOCKER", b"", timeout=2)
    assert await asyncio.wait_for(attempt, 10) is None
    assert (await _info(client, "KV_jobs"))["config"]["subjects"] == config["subjects"]


def _trials(url: str, conf: Config, trials: int, store: Path | None = None) -> list[bench_run.Row]:
    async def go() -> list[bench_run.Row]:
        nc = await nats.connect(url)
        await _create_all(nc)
        await nc.close()
        return await bench_run.heal_trials(url, conf, trials, store=store)

    return asyncio.run(go())


def test_floor_heals_deletes_and_drift(server: NatsServer, tmp_path: Path) -> None:
    """The floor, as `make bench` runs it, heals every trial: a deleted stream,
    KV bucket and object store come back, and drift is reverted."""
    conf = cfg.load(str(config_for(server.url, tmp_path)))
    with bench_run.process([sys.executable, "-m", "bench.floor", server.url], "ready"):
        rows = _trials(server.url, conf, trials=3, store=server.store)
    assert {(r.kind, r.fault) for r in rows} == {
        (kind, fault) for kind in ("stream", "kv", "object_store") for fault in ("delete", "drift")
    }
    for row in rows:
        assert row.error is None, row
        assert len(row.samples) == 3, row


def test_a_heal_that_never_comes_is_a_failed_row(
    server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no healer running, every row fails at its first trial with the
    reason, and every row is still attempted: one failure never aborts the run."""
    monkeypatch.setattr(bench_run, "HEAL_WAIT", 0.2)
    conf = cfg.load(str(config_for(server.url, tmp_path)))
    rows = _trials(server.url, conf, trials=3)
    assert len(rows) == 6
    assert [r.error for r in rows] == ["trial 1: not healed in 0.2s"] * 6
    table = bench_run.heal_rows("nobody", rows, 3)
    assert len(table) == 6
    assert all("0 of 3 | FAILED: trial 1: not healed in 0.2s" in line for line in table)


async def test_a_stream_that_lost_its_files_is_repaired(
    server: NatsServer, client: Client, tmp_path: Path
) -> None:
    """A stream listed as declared but without its directory on disk (what the
    broker's late removal of a deleted stream leaves behind a re-create) is
    repaired before the next trial: its directory is back, publishes are acked."""
    res = cfg.load(str(config_for(server.url, tmp_path))).by_stream()["RESULTS"]
    await _create_all(client)
    files = server.store / "jetstream" / "$G" / "streams" / "RESULTS"
    shutil.rmtree(files)
    await bench_run._restore(client, res, files)
    assert files.is_dir()
    ack = json.loads((await client.request("results.x", b"kept", timeout=2)).data)
    assert "error" not in ack, ack
