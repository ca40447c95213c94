"""Counting what a client asked JetStream to do, from the broker's own audit.

Every JetStream API call is announced on `$JS.EVENT.ADVISORY.API` with the
request subject and the client's name, so a test can prove "zero writes"
and "never a delete or purge" without trusting the code under test.
`ApiAudit` counts live, from a subscription; the fault suite keeps the same
announcements in a stream of its own (`chaos.ledger.DurableAudit`) and
reads them with the same `verb` and classifications defined here.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

AUDIT_SUBJECT = "$JS.EVENT.ADVISORY.API"
WATCHDOG_NAME = "kanade-watchdog"  # the [nats] name the tests give the watchdog
WRITE_VERBS = ("CREATE", "UPDATE")
DESTRUCTIVE_VERBS = ("DELETE", "PURGE", "MSG.DELETE")


def verb(subject: str) -> str:
    """`STREAM.CREATE` from `$JS.API.STREAM.CREATE.X` (or `$JS.<domain>.API...`);
    `STREAM.MSG.DELETE` from `$JS.API.STREAM.MSG.DELETE.X`; anything that is
    not an API subject as it is."""
    parts = subject.split(".")
    if "API" not in parts:
        return subject
    rest = parts[parts.index("API") + 1 :]
    return ".".join(rest[:3] if rest[:2] == ["STREAM", "MSG"] else rest[:2])


def is_write(api_verb: str) -> bool:
    return api_verb.endswith(WRITE_VERBS)


def is_destructive(api_verb: str) -> bool:
    return any(word in api_verb for word in ("DELETE", "PURGE"))


class ApiAudit:
    """Counts API verbs ('STREAM.CREATE', 'STREAM.DELETE', ...), optionally
    only those made by clients with a given connection name."""

    def __init__(self, nc: Client, *, client_name: str | None = None) -> None:
        self.nc = nc
        self.client_name = client_name
        self.verbs: Counter[str] = Counter()
        self.subjects: list[str] = []
        self.requests: list[tuple[str, str]] = []  # (subject, request body), in order
        self._sub: Subscription | None = None

    async def start(self) -> ApiAudit:
        self._sub = await self.nc.subscribe(AUDIT_SUBJECT, cb=self._on_msg)
        await self.nc.flush()
        return self

    async def _on_msg(self, msg: Msg) -> None:
        try:
            doc = json.loads(msg.data)
        except ValueError:
            return
        name = (doc.get("client") or {}).get("name", "")
        if self.client_name is not None and name != self.client_name:
            return
        subject = str(doc.get("subject", ""))
        self.subjects.append(subject)
        self.requests.append((subject, str(doc.get("request", ""))))
        if "API" in subject.split("."):
            self.verbs[verb(subject)] += 1

    def count(self, *verbs: str) -> int:
        return sum(n for v, n in self.verbs.items() if any(v.endswith(x) for x in verbs))

    @property
    def writes(self) -> int:
        return sum(n for v, n in self.verbs.items() if is_write(v))

    @property
    def destructive(self) -> int:
        return sum(n for v, n in self.verbs.items() if is_destructive(v))

    async def settle(self, seconds: float = 0.2) -> None:
        """Advisories arrive asynchronously: flush and give them a moment."""
        await self.nc.flush()
        await asyncio.sleep(seconds)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()


@asynccontextmanager
async def audited(nc: Client, client_name: str = WATCHDOG_NAME) -> AsyncIterator[ApiAudit]:
    """An audit of one client's API calls for the length of the block; any
    delete or purge it saw fails the test: the watchdog never destroys data."""
    audit = await ApiAudit(nc, client_name=client_name).start()
    try:
        yield audit
    finally:
        await audit.settle()
        await audit.stop()
    assert audit.destructive == 0, audit.verbs
