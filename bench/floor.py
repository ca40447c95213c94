"""The floor: the least a healer can do. A raw nats-py client that knows the
25 stream configs (`floor_streams.json`, data), re-creates a stream the
moment its DELETED advisory arrives and reverts an UPDATED one after one
read. No config file, planner, logging or safety rules, and nothing from
kanade_watchdog: the latency the watchdog is compared against.

A re-create the broker refuses (10049 while it still removes the deleted
stream's files) is retried at once, as any real client would.

Run: python -m bench.floor NATS_URL
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

CONFIGS = Path(__file__).with_name("floor_streams.json")
RETRY_FOR = 5.0  # seconds a refused re-create is retried
RETRY_PAUSE = 0.002


def load_configs(path: Path = CONFIGS) -> dict[str, dict[str, Any]]:
    configs: list[dict[str, Any]] = json.loads(path.read_text())
    return {c["name"]: c for c in configs}


def drifted(observed: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """A field we send differs; the broker omits false/zero/empty fields."""
    return any(observed.get(k, type(v)()) != v for k, v in wanted.items())


async def api(nc: Client, subject: str, body: dict[str, Any] | None) -> dict[str, Any]:
    payload = json.dumps(body).encode() if body is not None else b""
    answer: dict[str, Any] = json.loads((await nc.request(subject, payload, timeout=2)).data)
    return answer


async def recreate(nc: Client, config: dict[str, Any]) -> dict[str, Any] | None:
    """Create until the broker accepts; the last error if it never does."""
    deadline = time.monotonic() + RETRY_FOR
    while True:
        answer = await api(nc, f"$JS.API.STREAM.CREATE.{config['name']}", config)
        error: dict[str, Any] | None = answer.get("error")
        if error is None or time.monotonic() > deadline:
            return error
        await asyncio.sleep(RETRY_PAUSE)


async def revert(nc: Client, config: dict[str, Any]) -> dict[str, Any] | None:
    """One read; an update with our fields laid over the broker's own config."""
    info = await api(nc, f"$JS.API.STREAM.INFO.{config['name']}", None)
    observed = info.get("config")
    if observed is None or not drifted(observed, config):
        return None
    answer = await api(nc, f"$JS.API.STREAM.UPDATE.{config['name']}", {**observed, **config})
    error: dict[str, Any] | None = answer.get("error")
    return error


async def main(url: str) -> None:
    configs = load_configs()
    nc = await nats.connect(url, name="bench-floor")

    async def on_advisory(msg: Msg) -> None:
        verb, stream = msg.subject.split(".")[-2:]
        config = configs.get(stream)
        if config is None:
            return
        try:
            if verb == "DELETED":
                error = await recreate(nc, config)
            elif verb == "UPDATED":
                error = await revert(nc, config)
            else:
                return
        except TimeoutError:  # nats-py's request timeout is the builtin one
            error = {"description": "no answer in 2s"}
        if error is not None:
            print(f"{verb.lower()} {stream}: not healed: {error}", file=sys.stderr, flush=True)

    await nc.subscribe("$JS.EVENT.ADVISORY.STREAM.*.*", cb=on_advisory)
    await nc.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
