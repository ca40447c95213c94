"""Counting what a client asked JetStream to do, from the broker's own audit.

Every JetStream API call is announced on `$JS.EVENT.ADVISORY.API` with the
request subject and the client's name, so a test can prove "zero writes"
and "never a delete or purge" without trusting the code under test.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

WRITE_VERBS = ("CREATE", "UPDATE")
DESTRUCTIVE_VERBS = ("DELETE", "PURGE", "MSG.DELETE")


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
        self._sub = await self.nc.subscribe("$JS.EVENT.ADVISORY.API", cb=self._on_msg)
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
        parts = subject.split(".")
        # $JS.API.STREAM.CREATE.<name> (or $JS.<domain>.API...) -> STREAM.CREATE
        if "API" in parts:
            i = parts.index("API")
            verb = ".".join(parts[i + 1 : i + 3])
            if parts[i + 1 : i + 3] == ["STREAM", "MSG"]:
                verb = ".".join(parts[i + 1 : i + 4])
            self.verbs[verb] += 1

    def count(self, *verbs: str) -> int:
        return sum(n for v, n in self.verbs.items() if any(v.endswith(x) for x in verbs))

    @property
    def writes(self) -> int:
        return self.count(*WRITE_VERBS)

    @property
    def destructive(self) -> int:
        return sum(n for v, n in self.verbs.items() if v.endswith(("DELETE", "PURGE")))

    async def settle(self, seconds: float = 0.2) -> None:
        """Advisories arrive asynchronously: flush and give them a moment."""
        await self.nc.flush()
        await asyncio.sleep(seconds)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
