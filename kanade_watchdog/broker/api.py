"""The JetStream API edge: raw JSON requests, translated errors, counted calls.

Requests go straight to `$JS.API.*` with JSON bodies rather than through
nats-py's dataclasses: an update REPLACES a stream's whole config, and the
dataclasses drop fields this client version does not know, which would reset
them on the broker. Every failure leaves here as a `errors.BrokerError`.
`connect` builds the client and `link` keeps it; `apply`, `daemon.reconcile`
and the one-shot commands call this module.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any

import nats.errors
from nats.aio.client import Client

from kanade_watchdog.core.plan import Observed
from kanade_watchdog.core.serverinfo import ServerInfo, from_info
from kanade_watchdog.model.errors import (
    ERR_STREAM_NOT_FOUND,
    ApiError,
    BrokerError,
    BrokerUnavailable,
    PermissionDenied,
)

PAGE_SIZE = 256  # the broker's fixed page for STREAM.LIST
LIST_WAIT = 6.0  # a clustered broker waits ~4 s for unresponsive stream leaders
_VIOLATION = re.compile(r'permissions violation for (publish|subscription) to "?([^"\s]+)"?', re.I)


class NoAnswer(BrokerUnavailable):
    """A request went out and no answer came within its timeout. The broker
    may still carry it out: an answer that arrives late is dropped, so a
    write that ends this way is looked at again before it is called failed."""


def api_prefix(domain: str | None) -> str:
    """`$JS.API`, or `$JS.<domain>.API` to reach a leafnode/hub domain."""
    return f"$JS.{domain}.API" if domain else "$JS.API"


class Broker:
    """JetStream stream management over one connection."""

    def __init__(self, nc: Client, *, timeout: float, domain: str | None = None) -> None:
        self.nc = nc
        self.timeout = timeout
        self.prefix = api_prefix(domain)
        self.requests: Counter[str] = Counter()  # by API verb, for plans and benchmarks
        self._denied: dict[str, float] = {}
        self._inbox_denied = False  # replies can never reach us: every request times out
        self._names_denied: PermissionDenied | None = None  # STREAM.NAMES not granted

    def note_error(self, message: str) -> tuple[str, str] | None:
        """Fed from the client's error callback: the broker reports a denied
        publish or subscription asynchronously, and our request then only
        times out. Returns (publish|subscription, subject) for a violation."""
        match = _VIOLATION.search(message)
        if not match:
            return None
        kind, subject = match.group(1).lower(), match.group(2)
        # nats-py lower-cases the server's text; subjects are compared so too.
        if kind == "publish":
            self._denied[subject.lower()] = time.monotonic()
        elif subject.lower().startswith("_inbox."):
            self._inbox_denied = True
        return kind, subject

    async def _request(
        self, verb: str, subject: str, body: Mapping[str, Any] | None, *, wait: float = 0.0
    ) -> Any:
        self.requests[verb] += 1
        payload = json.dumps(body, separators=(",", ":")).encode() if body is not None else b""
        timeout = max(self.timeout, wait)
        try:
            msg = await self.nc.request(subject, payload, timeout=timeout)
        except nats.errors.NoRespondersError:
            raise BrokerUnavailable(
                f"no JetStream responds on {subject} (JetStream off, or wrong domain)",
                subject=subject,
            ) from None
        except (nats.errors.TimeoutError, TimeoutError):
            if self._inbox_denied:
                raise PermissionDenied(
                    "permission denied: subscribe to _INBOX.> (replies cannot reach the "
                    "watchdog; grant it in the user's subscribe permissions)",
                    subject="_INBOX.>",
                ) from None
            if self._denied.pop(subject.lower(), None) is not None:
                raise PermissionDenied(
                    f"permission denied: publish to {subject} (grant it in the user's "
                    f"publish permissions)",
                    subject=subject,
                ) from None
            raise NoAnswer(f"no answer on {subject} within {timeout:g}s", subject=subject) from None
        except nats.errors.Error as exc:  # closed, reconnecting, draining...
            raise BrokerUnavailable(
                f"{str(exc) or type(exc).__name__} ({subject})", subject=subject
            ) from exc
        try:
            answer = json.loads(msg.data)
        except ValueError:
            raise BrokerError(
                f"unreadable answer on {subject}: {msg.data[:80]!r}", subject=subject
            ) from None
        if not isinstance(answer, dict):
            raise BrokerError(f"unexpected answer on {subject}: {msg.data[:80]!r}", subject=subject)
        error = answer.get("error")
        if isinstance(error, dict):
            raise ApiError(
                code=int(error.get("code", 0) or 0),
                err_code=int(error.get("err_code", 0) or 0),
                description=str(error.get("description", "unknown error")),
                subject=subject,
            )
        return answer

    @staticmethod
    def _observed(answer: Mapping[str, Any]) -> Observed:
        return Observed(
            config=answer.get("config") or {},
            state=answer.get("state") or {},
            cluster=answer.get("cluster") or {},
        )

    async def list_streams(self) -> dict[str, Observed]:
        """Every stream, one request per page of 256. A clustered broker waits
        for slow stream leaders before answering and then lists leaderless
        streams by name only: they come back as `leaderless` observations.
        Each page is turned into observations as it arrives: at 10,000 streams
        doing it after the last page held the event loop for ~30 ms."""
        out: dict[str, Observed] = {}
        missing: list[str] = []
        async for page, gone in self._pages():
            for item in page:
                obs = self._observed(item)
                out[str(obs.config.get("name", ""))] = obs
            missing += gone
        for name in missing:
            out.setdefault(name, Observed(config={"name": name}, leaderless=True))
        return out

    async def list_raw(self) -> tuple[list[Mapping[str, Any]], list[str]]:
        """The stream list's answers as the broker sent them, page after page,
        and the names of the streams it listed without a leader."""
        items: list[Mapping[str, Any]] = []
        missing: list[str] = []
        async for page, gone in self._pages():
            items += page
            missing += gone
        return items, missing

    async def _pages(self) -> AsyncIterator[tuple[list[Mapping[str, Any]], list[str]]]:
        """Each STREAM.LIST page: its streams, and those listed without a leader."""
        offset = 0
        while True:
            answer = await self._request(
                "list", f"{self.prefix}.STREAM.LIST", {"offset": offset}, wait=LIST_WAIT
            )
            page = answer.get("streams") or []
            offset += len(page)
            yield page, [str(name) for name in answer.get("missing") or []]
            if not page or offset >= int(answer.get("total", 0) or 0):
                return

    async def stream_names(self) -> set[str]:
        """Every stream's name, one request per page of 1,024 (`ports.StreamNames`).
        A user granted no STREAM.NAMES (an older grant) is refused at once after
        the first denial: a denied request costs a whole request timeout."""
        if self._names_denied is not None:
            raise self._names_denied
        names: set[str] = set()
        offset = 0
        while True:
            try:
                answer = await self._request(
                    "names", f"{self.prefix}.STREAM.NAMES", {"offset": offset}, wait=LIST_WAIT
                )
            except PermissionDenied as exc:
                self._names_denied = exc
                raise
            page = answer.get("streams") or []
            names.update(str(name) for name in page)
            offset += len(page)
            if not page or offset >= int(answer.get("total", 0) or 0):
                return names

    async def stream_info(self, name: str) -> Observed | None:
        """One stream, or None when it does not exist."""
        try:
            answer = await self._request("info", f"{self.prefix}.STREAM.INFO.{name}", None)
        except ApiError as exc:
            if exc.err_code == ERR_STREAM_NOT_FOUND:
                return None
            raise
        return self._observed(answer)

    @property
    def server(self) -> ServerInfo:
        """The connected server, from its INFO (renewed on every reconnect)."""
        return from_info(getattr(self.nc, "_server_info", None) or {})

    def _body(self, config: Mapping[str, Any]) -> Mapping[str, Any]:
        """A create or update request: pedantic where the server takes it, so a
        value it would adjust (or a field it does not know) is refused instead."""
        return {**config, "pedantic": True} if self.server.pedantic else config

    async def create(self, config: Mapping[str, Any]) -> Observed:
        name = config["name"]
        answer = await self._request(
            "create", f"{self.prefix}.STREAM.CREATE.{name}", self._body(config)
        )
        obs = self._observed(answer)
        # An identical stream already there is answered like a create, but
        # without did_create: someone else (another watchdog) made it. (Every
        # server with stream metadata, 2.10+, sets it on a real create.)
        return replace(obs, did_create=bool(answer.get("did_create", False)))

    async def update(self, config: Mapping[str, Any]) -> Observed:
        name = config["name"]
        return self._observed(
            await self._request("update", f"{self.prefix}.STREAM.UPDATE.{name}", self._body(config))
        )

    async def account_info(self) -> dict[str, Any]:
        answer: dict[str, Any] = await self._request("account", f"{self.prefix}.INFO", None)
        return answer

    # --- durable consumers (`ports.ConsumerBroker`) -----------------------------------

    async def list_consumers(self, stream: str) -> list[Mapping[str, Any]]:
        """Every consumer of `stream`, one request per page of 256."""
        out: list[Mapping[str, Any]] = []
        while True:
            answer = await self._request(
                "consumer_list", f"{self.prefix}.CONSUMER.LIST.{stream}", {"offset": len(out)}
            )
            page = answer.get("consumers") or []
            out.extend(page)
            if not page or len(out) >= int(answer.get("total", 0) or 0):
                return out

    async def put_consumer(
        self, stream: str, durable: str, config: Mapping[str, Any], *, action: str
    ) -> Mapping[str, Any]:
        body = {"stream_name": stream, "config": dict(config), "action": action}
        answer: Mapping[str, Any] = await self._request(
            f"consumer_{action}", f"{self.prefix}.CONSUMER.CREATE.{stream}.{durable}", body
        )
        return answer
