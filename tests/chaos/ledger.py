"""Reading a whole stream back, and the two stream-backed records the suite keeps.

The raw API helpers (`api`, `api_ok`, `connect`) are `tests.jsapi`'s, with
the suite's short wait. `read_stream` pulls messages with batched DIRECT.GET
requests (allowed by `allow_direct`), which the broker does not announce on
its API audit subject, so reading the audit does not feed it. `DurableAudit` is the
broker's `$JS.EVENT.ADVISORY.API` audit captured in a file stream of its
own: unlike a live subscription it misses nothing while a test client is
reconnecting after a kill -9, and counts survive every restart on the same
store. `Producer` publishes to a declared stream with JetStream acks the
whole time and keeps what was acknowledged; `Producer.verify` finds every
acknowledged message that is no longer there, byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from tests import jsapi
from tests.audit import AUDIT_SUBJECT, is_destructive, is_write, verb
from tests.jsapi import connect as connect  # noqa: PLC0414 - re-exported

AUDIT_STREAM = "CHAOS_AUDIT"
BATCH = 1000
REQUEST_WAIT = 2.0  # seconds: the broker may be down or frozen in these scenarios


async def api(nc: Client, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One raw JetStream API request (`jsapi.request`); the answer, error bodies included."""
    return await jsapi.request(nc, subject, body, wait=REQUEST_WAIT)


async def api_ok(nc: Client, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    return await jsapi.ok(nc, subject, body, wait=REQUEST_WAIT)


async def retry_api(
    nc: Client, subject: str, body: dict[str, Any] | None = None, *, within: float = 10.0
) -> dict[str, Any]:
    """`api_ok`, retried while the broker is still coming up (bounded)."""
    deadline = time.monotonic() + within
    while True:
        try:
            answer = await api(nc, subject, body)
        except (nats.errors.Error, TimeoutError):
            answer = {"error": {"description": "no answer yet"}}
        if "error" not in answer:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"{subject}: {answer['error']}")
        await asyncio.sleep(0.02)


async def read_stream(nc: Client, stream: str, *, start: int = 1) -> dict[int, bytes]:
    """seq -> data of every message from `start` on, in batched direct gets."""
    out: dict[int, bytes] = {}
    inbox = nc.new_inbox()
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def deliver(msg: Msg) -> None:
        await queue.put(msg)

    sub = await nc.subscribe(inbox, cb=deliver)
    try:
        seq = start
        while True:
            request = json.dumps({"seq": seq, "batch": BATCH}).encode()
            await nc.publish(f"$JS.API.DIRECT.GET.{stream}", request, reply=inbox)
            got = 0
            while True:
                msg = await asyncio.wait_for(queue.get(), timeout=5)
                headers = msg.headers or {}
                status = headers.get("Status")
                if status is not None:
                    break  # 204 end of batch, or 404 nothing at/after seq
                number = int(headers["Nats-Sequence"])
                out[number] = msg.data
                seq = number + 1
                got += 1
            if status != "204" or got == 0:
                return out
    finally:
        await sub.unsubscribe()


@dataclass(frozen=True)
class ApiCall:
    at: float  # broker time, seconds since the epoch
    client: str
    subject: str

    @property
    def verb(self) -> str:
        """`STREAM.CREATE` from `$JS.API.STREAM.CREATE.X` (`STREAM.MSG.DELETE`...)."""
        return verb(self.subject)

    @property
    def stream(self) -> str:
        return self.subject.rsplit(".", 1)[-1]

    @property
    def write(self) -> bool:
        return is_write(self.verb)

    @property
    def destructive(self) -> bool:
        return is_destructive(self.verb)


def _broker_time(text: str) -> float:
    """Go's RFC 3339 with nanoseconds -> epoch seconds (microsecond precision)."""
    head, _, frac = text.rstrip("Z").partition(".")
    stamp = datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}").replace(tzinfo=UTC)
    return stamp.timestamp()


class DurableAudit:
    """Every JetStream API call the broker announced, kept in AUDIT_STREAM.

    `collect()` reads what is new; `calls` holds everything collected so
    far, across restarts (and across wipes: collect before wiping, then
    `ensure()` again)."""

    def __init__(self, nc: Client, *, client_name: str) -> None:
        self.nc = nc
        self.client_name = client_name
        self.calls: list[ApiCall] = []  # the watched client's calls only
        self.seen = 0  # every announced call, any client
        self._next = 1
        self._created = ""  # the audit stream's creation time: a new one starts at 1

    async def ensure(self) -> DurableAudit:
        config = {
            "name": AUDIT_STREAM,
            "subjects": [AUDIT_SUBJECT],
            "storage": "file",
            "allow_direct": True,
            "max_age": 0,
        }
        answer = await retry_api(self.nc, f"$JS.API.STREAM.CREATE.{AUDIT_STREAM}", config)
        created = str(answer.get("created", ""))
        if created != self._created:
            self._created, self._next = created, 1  # a new stream: a wiped store
        return self

    async def collect(self, *, settle: float = 0.05) -> DurableAudit:
        """Read every announcement stored since the last collect. `settle`
        gives announcements of calls just answered time to be stored."""
        await asyncio.sleep(settle)
        for seq, data in sorted(
            (await read_stream(self.nc, AUDIT_STREAM, start=self._next)).items()
        ):
            self._next = seq + 1
            self.seen += 1
            with contextlib.suppress(ValueError, KeyError, TypeError):
                doc = json.loads(data)
                name = str((doc.get("client") or {}).get("name", ""))
                if name == self.client_name:
                    self.calls.append(
                        ApiCall(_broker_time(doc["timestamp"]), name, str(doc["subject"]))
                    )
        return self

    def mark(self) -> int:
        """A position: pass it as `after=` to count only later calls."""
        return len(self.calls)

    def writes(self, *, after: int = 0, stream: str | None = None) -> list[ApiCall]:
        return [c for c in self.calls[after:] if c.write and (stream is None or c.stream == stream)]

    def destructive(self, *, after: int = 0) -> list[ApiCall]:
        return [c for c in self.calls[after:] if c.destructive]


class Producer:
    """Publishes numbered messages to `subject` with JetStream acks, forever
    until stopped, riding out broker kills; `acked` maps the sequence the
    broker acknowledged to the exact payload sent."""

    def __init__(self, url: str, subject: str, *, pause: float = 0.004) -> None:
        self.url = url
        self.subject = subject
        self.pause = pause
        self.acked: dict[int, bytes] = {}
        self.attempts = 0
        self.failures = 0
        self._nc: Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def start(self) -> Producer:
        self._nc = await connect(self.url, "chaos-producer")
        self._task = asyncio.create_task(self._run(), name="producer")
        return self

    async def _run(self) -> None:
        assert self._nc is not None
        js = self._nc.jetstream()
        while not self._stop.is_set():
            self.attempts += 1
            payload = f"msg-{self.attempts}-{time.time():.6f}".encode()
            try:
                ack = await js.publish(self.subject, payload, timeout=1.0)
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
                self.failures += 1  # the broker is down or restarting: not acked
                await asyncio.sleep(0.02)
                continue
            self.acked[ack.seq] = payload
            await asyncio.sleep(self.pause)

    async def wait_acks(self, n: int, *, within: float = 10.0) -> None:
        """Until at least `n` more messages than now are acknowledged."""
        target = len(self.acked) + n
        deadline = time.monotonic() + within
        while len(self.acked) < target:
            assert time.monotonic() < deadline, f"producer stuck at {len(self.acked)} acks"
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._task, timeout=5)
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()

    async def quick_check(self, nc: Client, stream: str) -> list[int]:
        """Cheap check after each fault: acknowledged sequences outside the
        stream's range. Nothing ever deletes from the producer's stream, so a
        hole inside the range sends the check to the full `verify`."""
        acked = set(self.acked)
        if not acked:
            return []
        state = (await retry_api(nc, f"$JS.API.STREAM.INFO.{stream}"))["state"]
        first, last = int(state["first_seq"]), int(state["last_seq"])
        if int(state.get("num_deleted", 0) or 0):
            return await self.verify(nc, stream)
        return sorted(s for s in acked if s < first or s > last)

    async def verify(self, nc: Client, stream: str) -> list[int]:
        """Every acknowledged sequence whose message is gone or different."""
        stored = await read_stream(nc, stream)
        return sorted(seq for seq, data in self.acked.items() if stored.get(seq) != data)
