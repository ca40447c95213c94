"""The floor: the least a healer can do. A raw client that knows the 25
configs, re-creates a stream the moment its DELETED advisory arrives and
reverts an UPDATED one after one read. No config file, no planner, no
logging, no safety rules: the latency the watchdog is compared against.

Run: python -m bench.floor CONFIG
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import nats
from nats.aio.msg import Msg

from kanade_watchdog import config as cfg
from kanade_watchdog import desired
from kanade_watchdog.plan import Action, Observed, decide
from kanade_watchdog.worker import utcnow


async def main(path: str) -> None:
    conf = cfg.load(path)
    by_stream = conf.by_stream()
    nc = await nats.connect(list(conf.nats.servers), name="bench-floor")

    async def on_advisory(msg: Msg) -> None:
        verb, stream = msg.subject.split(".")[-2:]
        res = by_stream.get(stream)
        if res is None:
            return
        if verb == "DELETED":
            body = json.dumps(desired.create_config(res)).encode()
            answer = await nc.request(f"$JS.API.STREAM.CREATE.{stream}", body, timeout=2)
            if b'"error"' in answer.data:
                print("create failed", answer.data, file=sys.stderr, flush=True)
        elif verb == "UPDATED":
            info = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"")).data)
            d = decide(res, Observed(config=info["config"], state=info["state"]), utcnow())
            if d.action is Action.UPDATE and d.send is not None:
                body = json.dumps(d.send).encode()
                await nc.request(f"$JS.API.STREAM.UPDATE.{stream}", body, timeout=2)

    await nc.subscribe("$JS.EVENT.ADVISORY.STREAM.*.*", cb=on_advisory)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
