"""An in-memory broker that speaks `core.ports.Broker` and `ConsumerBroker`,
for pure daemon tests.

It keeps stream configs the way nats-server 2.15 answers them (server
defaults filled in, `_nats.*` metadata added) and refuses what the server
refuses for the fields the watchdog writes: a name in use with another
config (10058), a missing stream on update or info (10059), overlapping
subjects (10065), a storage or retention-to/from-workqueue change and a
dedupe window longer than max_age (10052); for consumers, a create over a
different one (10148), an update of a missing one (10149), either on a
missing stream (10059). `consumer_faults` makes the next consumer writes fail.
tests/test_broker_contract.py runs the same cases against this fake and a
real nats-server, so the fake cannot drift from the real thing unnoticed.

`SlowBroker` wraps any broker and holds chosen calls until released: the
way a test wedges a pass without a hook inside the package.
"""

from __future__ import annotations

import asyncio
import copy
from collections import Counter
from collections.abc import Mapping
from typing import Any

from kanade_watchdog.core.plan import Observed
from kanade_watchdog.core.ports import Broker, StreamNames
from kanade_watchdog.core.serverinfo import ServerInfo, from_info
from kanade_watchdog.model.errors import ApiError, BrokerError
from kanade_watchdog.model.subjects import subjects_overlap

SERVER_VERSION = "2.15.1"
# What nats-server 2.15 fills in for a stream created with a name and subjects only.
DEFAULTS: dict[str, Any] = {
    "retention": "limits",
    "max_consumers": -1,
    "max_msgs": -1,
    "max_bytes": -1,
    "max_age": 0,
    "max_msgs_per_subject": -1,
    "max_msg_size": -1,
    "discard": "old",
    "storage": "file",
    "num_replicas": 1,
    "duplicate_window": 120_000_000_000,
    "compression": "none",
    "allow_direct": False,
    "mirror_direct": False,
    "sealed": False,
    "deny_delete": False,
    "deny_purge": False,
    "allow_rollup_hdrs": False,
    "consumer_limits": {},
    "allow_msg_ttl": False,
}
_SERVER_METADATA = {"_nats.level": "1", "_nats.req.level": "0", "_nats.ver": SERVER_VERSION}
_EMPTY_STATE: dict[str, Any] = {
    "messages": 0,
    "bytes": 0,
    "first_seq": 0,
    "first_ts": "0001-01-01T00:00:00Z",
    "last_seq": 0,
    "last_ts": "0001-01-01T00:00:00Z",
    "consumer_count": 0,
}


def _error(code: int, err_code: int, description: str, subject: str) -> ApiError:
    return ApiError(code=code, err_code=err_code, description=description, subject=subject)


NAMES_PAGE = 1024  # STREAM.NAMES answers this many names a request


class FakeBroker:
    """Streams and consumers in dicts. `delete()`, `drift()` and
    `delete_consumer()` act like another client."""

    def __init__(self, server: ServerInfo | None = None) -> None:
        self.streams: dict[str, dict[str, Any]] = {}
        self.requests: Counter[str] = Counter()
        self.consumers: dict[tuple[str, str], dict[str, Any]] = {}  # (stream, durable) -> config
        # Errors the next consumer writes raise, in order (a test's broker faults).
        self.consumer_faults: list[BrokerError] = []
        self._server = server or from_info({"version": SERVER_VERSION, "api_lvl": 2})

    @property
    def server(self) -> ServerInfo:
        return self._server

    # --- the Broker protocol --------------------------------------------------------

    async def list_streams(self) -> dict[str, Observed]:
        self.requests["list"] += 1
        return {name: self._observed(name) for name in self.streams}

    async def stream_names(self) -> set[str]:
        self.requests["names"] += 1 + max(0, len(self.streams) - 1) // NAMES_PAGE
        return set(self.streams)

    async def stream_info(self, name: str) -> Observed | None:
        self.requests["info"] += 1
        return self._observed(name) if name in self.streams else None

    async def create(self, config: Mapping[str, Any]) -> Observed:
        self.requests["create"] += 1
        name = str(config["name"])
        subject = f"$JS.API.STREAM.CREATE.{name}"
        stored = self._normalized(config)
        self._check_window(stored, subject)
        existing = self.streams.get(name)
        if existing is not None:
            if existing != stored:
                raise _error(
                    400, 10058, "stream name already in use with a different configuration", subject
                )
            return self._observed(name)
        self._check_overlap(name, stored, subject)
        self.streams[name] = stored
        return self._observed(name)

    async def update(self, config: Mapping[str, Any]) -> Observed:
        self.requests["update"] += 1
        name = str(config["name"])
        subject = f"$JS.API.STREAM.UPDATE.{name}"
        existing = self.streams.get(name)
        if existing is None:
            raise _error(404, 10059, "stream not found", subject)
        stored = self._normalized(config)
        self._check_window(stored, subject)
        if stored["storage"] != existing["storage"]:
            raise _error(
                500, 10052, "stream configuration update can not change storage type", subject
            )
        if "workqueue" in (stored["retention"], existing["retention"]) and (
            stored["retention"] != existing["retention"]
        ):
            raise _error(
                500,
                10052,
                "stream configuration update can not change retention policy to/from workqueue",
                subject,
            )
        self._check_overlap(name, stored, subject)
        self.streams[name] = stored
        return self._observed(name)

    async def account_info(self) -> dict[str, Any]:
        self.requests["account"] += 1
        return {"streams": len(self.streams), "reserved_storage": 0, "reserved_memory": 0}

    # --- the ConsumerBroker protocol ------------------------------------------------

    async def list_consumers(self, stream: str) -> list[Mapping[str, Any]]:
        self.requests["consumer_list"] += 1
        if stream not in self.streams:
            raise _error(404, 10059, "stream not found", f"$JS.API.CONSUMER.LIST.{stream}")
        return [
            {
                "stream_name": stream,
                "name": durable,
                "config": copy.deepcopy(config),
                "ack_floor": {"consumer_seq": 0, "stream_seq": 0},
            }
            for (s, durable), config in sorted(self.consumers.items())
            if s == stream
        ]

    async def put_consumer(
        self, stream: str, durable: str, config: Mapping[str, Any], *, action: str
    ) -> Mapping[str, Any]:
        self.requests[f"consumer_{action}"] += 1
        subject = f"$JS.API.CONSUMER.CREATE.{stream}.{durable}"
        if self.consumer_faults:
            raise self.consumer_faults.pop(0)
        if stream not in self.streams:
            raise _error(404, 10059, "stream not found", subject)
        key = (stream, durable)
        stored = {**copy.deepcopy(dict(config)), "durable_name": durable, "name": durable}
        if action == "create" and key in self.consumers and self.consumers[key] != stored:
            raise _error(400, 10148, "consumer already exists", subject)
        if action == "update" and key not in self.consumers:
            raise _error(404, 10149, "consumer does not exist", subject)
        self.consumers[key] = stored
        return {"stream_name": stream, "name": durable, "config": copy.deepcopy(stored)}

    # --- another client's hands ---------------------------------------------------------

    def delete_consumer(self, stream: str, durable: str) -> None:
        del self.consumers[(stream, durable)]

    def delete(self, name: str) -> None:
        del self.streams[name]
        for key in [k for k in self.consumers if k[0] == name]:
            del self.consumers[key]  # a stream's consumers go with it

    def drift(self, name: str, **fields: Any) -> None:
        self.streams[name].update(fields)

    # --- server behaviour ---------------------------------------------------------------

    def _normalized(self, config: Mapping[str, Any]) -> dict[str, Any]:
        stored = {**DEFAULTS, **copy.deepcopy(dict(config))}
        metadata = {
            k: v for k, v in dict(stored.get("metadata") or {}).items() if not k.startswith("_nats")
        }
        stored["metadata"] = {**metadata, **_SERVER_METADATA}
        return stored

    @staticmethod
    def _check_window(config: Mapping[str, Any], subject: str) -> None:
        age, window = config["max_age"], config["duplicate_window"]
        if age and window > age:
            raise _error(500, 10052, "duplicates window can not be larger then max age", subject)

    def _check_overlap(self, name: str, config: Mapping[str, Any], subject: str) -> None:
        mine = list(config.get("subjects") or ())
        for other, other_config in self.streams.items():
            if other == name:
                continue
            for theirs in other_config.get("subjects") or ():
                if any(subjects_overlap(s, theirs) for s in mine):
                    raise _error(400, 10065, "subjects overlap with an existing stream", subject)

    def _observed(self, name: str) -> Observed:
        return Observed(config=copy.deepcopy(self.streams[name]), state=dict(_EMPTY_STATE))


class SlowBroker:
    """Wraps a broker; calls named in `hold` wait until `release` is set. A held
    call ignores cancellation when `stubborn`, like a hung client call."""

    def __init__(self, inner: Broker, *, hold: frozenset[str], stubborn: bool = False) -> None:
        self.inner = inner
        self.requests = inner.requests
        self.server = inner.server
        self.hold = hold
        self.stubborn = stubborn
        self.release = asyncio.Event()
        self.held = asyncio.Event()  # set once a call is being held

    async def _gate(self, verb: str) -> None:
        if verb not in self.hold:
            return
        self.held.set()
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                if not self.stubborn:
                    raise

    async def list_streams(self) -> dict[str, Observed]:
        await self._gate("list")
        return await self.inner.list_streams()

    async def stream_names(self) -> set[str]:
        await self._gate("names")
        assert isinstance(self.inner, StreamNames)
        return await self.inner.stream_names()

    async def stream_info(self, name: str) -> Observed | None:
        await self._gate("info")
        return await self.inner.stream_info(name)

    async def create(self, config: Mapping[str, Any]) -> Observed:
        await self._gate("create")
        return await self.inner.create(config)

    async def update(self, config: Mapping[str, Any]) -> Observed:
        await self._gate("update")
        return await self.inner.update(config)

    async def account_info(self) -> dict[str, Any]:
        await self._gate("account")
        return await self.inner.account_info()
