"""The seed's approach, put on a timer: every PERIOD seconds, create-or-update
every declared resource one after the other, as the backend's bootstrap does
once at boot. It heals only at the next tick and writes every resource on
every tick, in sync or not.

Run: python -m bench.seed_timer CONFIG PERIOD_SECONDS
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys

import nats
from nats.aio.client import Client

from kanade_watchdog.config import load as cfg
from kanade_watchdog.core import desired
from kanade_watchdog.model.resources import Resource


async def create_or_update(nc: Client, res: Resource) -> None:
    """async-nats create_or_update_*: look, then create or replace the config."""
    info = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{res.stream}", b"")).data)
    body = json.dumps(desired.create_config(res)).encode()
    verb = "CREATE" if "error" in info else "UPDATE"
    await nc.request(f"$JS.API.STREAM.{verb}.{res.stream}", body, timeout=5)


async def main(path: str, period: float) -> None:
    conf = cfg.load(path)
    nc = await nats.connect(list(conf.nats.servers), name="bench-seed")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    while not stop.is_set():
        for res in conf.resources:
            await create_or_update(nc, res)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), period)
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
