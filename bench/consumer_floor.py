"""The floor of the consumer tables: a healer of durable consumers written
with nothing but nats-py (no planner, no logging, no safety rules, no
position kept).

Library half (used by `bench.consumer_heal`): one layout of streams and their
durable consumers, written both as the daemon's TOML tables and as the
floor's JSON (complete create configs), so both healers declare the same.

Process half, `python -m bench.consumer_floor LAYOUT URL [--check list|info]`,
a `bench.rawclient.Floor` that also knows consumers:
  - creates every stream, then every consumer, once JetStream answers;
  - re-creates a consumer on its CONSUMER.DELETED advisory (one request;
    retried at once while refused);
  - re-creates a stream on its STREAM.DELETED advisory, then all its
    consumers at once; the same when a consumer's re-create is refused with
    10059 (stream not found): nats-server 2.15.1 at times sends no
    STREAM.DELETED advisory for a stream that had consumers;
  - on SIGHUP, a full check: the paged stream list, then per stream either
    its paged CONSUMER.LIST (`--check list`, one request per 256 consumers)
    or one CONSUMER.INFO per consumer (`--check info`, 64 in flight), and
    creates what is missing; one JSON `pass` line on stdout.

LAYOUT is a JSON file {"streams": [stream configs], "consumers": [{"stream":
NAME, "config": consumer config}]}. Never imports kanade_watchdog.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nats.errors

from bench import rawclient as rc

NS = rc.NS
STREAM_NOT_FOUND = 10059

# --- the shared layout -------------------------------------------------------------------


def stream_name(i: int) -> str:
    return f"CB{i:02d}"


def durable_name(j: int) -> str:
    return f"c{j:02d}"


def layout(streams: int, consumers: int, *, storage: str = "file") -> dict[str, Any]:
    """`streams` streams of `consumers` pull consumers each (explicit acks)."""
    out: dict[str, Any] = {"streams": [], "consumers": []}
    for i in range(streams):
        name = stream_name(i)
        out["streams"].append({"name": name, "subjects": [f"cb{i}.>"], "storage": storage})
        for j in range(consumers):
            config = {
                "durable_name": durable_name(j),
                "ack_policy": "explicit",
                "ack_wait": 30 * NS,
            }
            out["consumers"].append({"stream": name, "config": config})
    return out


def layout_toml(doc: Mapping[str, Any]) -> str:
    """The same layout as the daemon's `[streams.*]` and `[consumers.*.*]` tables."""
    out: list[str] = []
    for config in doc["streams"]:
        out += ["", f"[streams.{config['name']}]", f"subjects = {json.dumps(config['subjects'])}"]
        out += [f'storage = "{config["storage"]}"']
    for item in doc["consumers"]:
        config = item["config"]
        out += ["", f"[consumers.{item['stream']}.{config['durable_name']}]"]
        out += [
            f'ack_policy = "{config["ack_policy"]}"',
            f'ack_wait = "{config["ack_wait"] // NS}s"',
        ]
    return "\n".join(out) + "\n"


# --- requests ----------------------------------------------------------------------------


async def create_consumer(nc: Any, stream: str, config: Mapping[str, Any]) -> str:
    """'' on success (or the same consumer already there), else 'CODE text'."""
    subject = f"$JS.API.CONSUMER.CREATE.{stream}.{config['durable_name']}"
    body = {"stream_name": stream, "config": config, "action": "create"}
    try:
        answer = await rc.api(nc, subject, body, wait=2)
    except (nats.errors.Error, TimeoutError) as exc:
        return type(exc).__name__
    error = answer.get("error")
    return "" if not error else f"{error.get('err_code')} {error.get('description')}"


async def consumer_names(nc: Any, stream: str) -> set[str] | None:
    """The durable names on `stream` from its paged CONSUMER.LIST; None when
    the stream is missing."""
    out: set[str] = set()
    offset = 0
    while True:
        answer = await rc.api(nc, f"$JS.API.CONSUMER.LIST.{stream}", {"offset": offset}, wait=10)
        if "error" in answer:
            return None
        page = answer.get("consumers") or []
        out.update(item["name"] for item in page)
        offset += len(page)
        if not page or offset >= int(answer.get("total", 0)):
            return out


# --- the floor healer process --------------------------------------------------------------


class ConsumerFloor(rc.Floor):
    advisories = (
        "$JS.EVENT.ADVISORY.STREAM.DELETED.*",
        "$JS.EVENT.ADVISORY.CONSUMER.DELETED.*.*",
    )

    def __init__(self, path: Path, url: str, reconnect_wait: float, check: str) -> None:
        super().__init__(path, url, reconnect_wait)
        self.check = check
        self.consumers: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        self._restoring: set[str] = set()

    def load(self) -> None:
        doc = json.loads(self.path.read_text())
        self.configs = {c["name"]: c for c in doc["streams"]}
        self.consumers.clear()
        for item in doc["consumers"]:
            self.consumers[item["stream"]][item["config"]["durable_name"]] = item["config"]

    async def create_everything(self, why: str) -> None:
        await super().create_everything(why)
        assert self.nc is not None
        await asyncio.gather(
            *(
                self._consumer(stream, config)
                for stream, durables in self.consumers.items()
                for config in durables.values()
            )
        )

    async def on_advisory(self, msg: Any) -> None:
        parts = msg.subject.split(".")  # $JS.EVENT.ADVISORY.<KIND>.DELETED.<stream>[.<durable>]
        stream = parts[5]
        if parts[3] == "STREAM" and stream in self.configs:
            self.spawn(self._stream(stream))
        elif parts[3] == "CONSUMER" and (config := self.consumers[stream].get(parts[6])):
            self.spawn(self._consumer(stream, config))

    async def _stream(self, stream: str) -> None:
        if stream in self._restoring:
            return
        self._restoring.add(stream)
        try:
            await self._recreate(self.configs[stream])
            consumers = self.consumers[stream].values()
            await asyncio.gather(*(self._consumer(stream, c, restore=False) for c in consumers))
        finally:
            self._restoring.discard(stream)

    async def _consumer(
        self, stream: str, config: Mapping[str, Any], *, restore: bool = True
    ) -> None:
        assert self.nc is not None
        for _ in range(20):
            error = await create_consumer(self.nc, stream, config)
            if error.startswith(str(STREAM_NOT_FOUND)):
                # nats-server 2.15.1 at times sends no STREAM.DELETED for a
                # stream that had consumers: their advisory has to do
                if restore and stream in self.configs:
                    await self._stream(stream)
                return
            if not error:
                return
            await asyncio.sleep(0.01)

    async def full_pass(self, why: str) -> None:
        assert self.nc is not None
        nc = self.nc
        async with self._pass_lock:
            started = time.perf_counter()
            observed = await rc.list_streams(nc)
            missing = [c for n, c in self.configs.items() if n not in observed]
            await rc.create_all(nc, missing)
            gate = asyncio.Semaphore(64)

            async def absent(stream: str, durable: str) -> bool:
                async with gate:
                    answer = await rc.api(nc, f"$JS.API.CONSUMER.INFO.{stream}.{durable}")
                return "config" not in answer

            lost: list[tuple[str, Mapping[str, Any]]] = []
            if self.check == "info":
                pairs = [(s, c) for s, ds in self.consumers.items() for c in ds.values()]
                gone = await asyncio.gather(*(absent(s, c["durable_name"]) for s, c in pairs))
                lost = [pair for pair, g in zip(pairs, gone, strict=True) if g]
            else:
                streams = list(self.consumers)
                names = await asyncio.gather(*(consumer_names(nc, s) for s in streams))
                for stream, have in zip(streams, names, strict=True):
                    lost += [
                        (stream, c)
                        for d, c in self.consumers[stream].items()
                        if d not in (have or ())
                    ]
            await asyncio.gather(*(self._consumer(s, c) for s, c in lost))
            rc._emit(
                "pass",
                why=why,
                check=self.check,
                looked_at=sum(len(ds) for ds in self.consumers.values()),
                created=len(missing) + len(lost),
                ms=(time.perf_counter() - started) * 1000,
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("layout", type=Path)
    parser.add_argument("url")
    parser.add_argument("--check", choices=("list", "info"), default="list")
    parser.add_argument("--reconnect-wait", type=float, default=0.02)
    parser.add_argument("--resync", type=float, default=3600.0)
    args = parser.parse_args(argv)
    floor = ConsumerFloor(args.layout, args.url, args.reconnect_wait, args.check)
    asyncio.run(floor.run(args.resync))


if __name__ == "__main__":
    main()
