"""A real 3-node JetStream cluster on loopback, built from `natsserver.NatsServer`.

Each node has a unique server_name, its own store directory, a route to the
other two (`cluster { name, listen, routes }`), a server tag `node:<name>`
(so a test can pin an R1 resource to one node with placement tags) and a
monitoring port on 127.0.0.1 whose `/jsz` names the meta leader. A fresh
cluster elects its meta leader only once every node is up, so `start()`
starts all of them and then waits for a leader that every live node agrees
on and for the JetStream API to answer.

`close()` kills every node (kill -9) whatever state a test left it in; use
the `Cluster` as a context manager or from a fixture with a finalizer.
`R3_RESOURCES` is the declaration both users run.
Used by `test_cluster` and `bench.cluster_bench`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import nats
from nats.aio.client import Client

from tests import jsapi
from tests.natsserver import NatsServer, free_port

T = TypeVar("T")
CLUSTER_NAME = "kanade"
POLL = 0.05

# The declaration the cluster tests and the cluster benchmark run: 3 R3
# streams, 2 R3 KV buckets, 1 R3 object store, MiB caps (ORDERS placed on
# this cluster by name).
R3_RESOURCES = f"""
[streams.ORDERS]
subjects = ["orders.>"]
storage = "file"
num_replicas = 3
max_bytes = "1MiB"
placement = {{ cluster = "{CLUSTER_NAME}" }}

[streams.EVENTS]
subjects = ["events.>"]
storage = "file"
num_replicas = 3
max_bytes = "1MiB"

[streams.AUDIT]
subjects = ["audit.>"]
storage = "memory"
num_replicas = 3
max_bytes = "1MiB"

[kv_buckets.config]
history = 5
replicas = 3
max_bytes = "1MiB"

[kv_buckets.state]
replicas = 3
storage = "memory"
max_bytes = "1MiB"

[object_stores.blobs]
replicas = 3
max_bytes = "4MiB"
"""
R3_STREAMS = ("ORDERS", "EVENTS", "AUDIT", "KV_config", "KV_state", "OBJ_blobs")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a fresh loop in a helper thread, so the
    caller may be sync code inside a test whose own loop is running or not."""
    with ThreadPoolExecutor(1, thread_name_prefix="cluster-sync") as pool:
        return pool.submit(asyncio.run, coro).result()


class Node(NatsServer):
    """One cluster member: a NatsServer plus its route and monitoring ports."""

    def __init__(self, workdir: Path, *, name: str, cluster_port: int, http_port: int) -> None:
        super().__init__(workdir, name=name, http_port=http_port)
        self.cluster_port = cluster_port

    def meta_leader_seen(self) -> str:
        """The meta leader's server name as this node sees it ('' for none)."""
        jsz = self.monitor("/jsz")
        if jsz is None:
            return ""
        meta = jsz.get("meta_cluster") or {}
        return str(meta.get("leader") or "")

    def healthy(self) -> bool:
        """The node's own health check: JetStream up and every stream it
        hosts caught up (what a restarted node reaches after catching up)."""
        doc = self.monitor("/healthz")
        return doc is not None and doc.get("status") == "ok"


class Cluster:
    """Three JetStream servers routed to each other on loopback."""

    def __init__(self, workdir: Path, *, size: int = 3, jetstream_conf: str = "") -> None:
        self.workdir = workdir
        names = [f"n{i + 1}" for i in range(size)]
        self.nodes = [
            Node(workdir, name=name, cluster_port=free_port(), http_port=free_port())
            for name in names
        ]
        routes = ", ".join(f"nats-route://127.0.0.1:{n.cluster_port}" for n in self.nodes)
        for node in self.nodes:
            node.jetstream_conf = jetstream_conf
            node.extra_conf = (
                f'server_tags: ["node:{node.name}"]\n'
                "cluster {\n"
                f"  name: {CLUSTER_NAME}\n"
                f"  listen: 127.0.0.1:{node.cluster_port}\n"
                f"  routes: [{routes}]\n"
                "}\n"
            )

    # --- life -------------------------------------------------------------------------

    def start(self, *, within: float = 60.0) -> Cluster:
        """Start every node, then wait for an agreed meta leader and an API
        that answers. Any failure kills what was started."""
        try:
            for node in self.nodes:
                node.start(wait=False)
            for node in self.nodes:
                node.wait_ready(timeout=within)
            self.wait_meta_leader(within=within)
            run_sync(self.wait_api(within=within))
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """kill -9 every node that is still running (teardown; never raises)."""
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.kill()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- addresses --------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def live(self) -> Iterator[Node]:
        return (n for n in self.nodes if n.alive)

    async def connect(self, name: str = "test-observer", **options: Any) -> Client:
        """A plain client that can use any live node and reconnects quickly."""
        settings: dict[str, Any] = {
            "servers": self.urls,
            "name": name,
            "reconnect_time_wait": 0.1,
            "max_reconnect_attempts": -1,
            "connect_timeout": 2,
            "error_cb": jsapi.quiet_error,  # nodes are killed on purpose here
        }
        settings.update(options)
        return await nats.connect(**settings)

    # --- leaders ----------------------------------------------------------------------

    def meta_leader(self) -> Node | None:
        """The meta leader, if one is elected and every live node agrees."""
        seen = {n.meta_leader_seen() for n in self.live()}
        if len(seen) != 1:
            return None
        name = seen.pop()
        if not name:
            return None
        leader = self.node(name)
        return leader if leader.alive else None

    def wait_meta_leader(self, *, within: float = 30.0, not_: Node | None = None) -> Node:
        """Poll until a live meta leader (other than `not_`) is agreed on."""
        deadline = time.monotonic() + within
        while True:
            leader = self.meta_leader()
            if leader is not None and leader is not not_:
                return leader
            if time.monotonic() > deadline:
                views = {n.name: n.meta_leader_seen() for n in self.live()}
                raise AssertionError(f"no agreed meta leader within {within}s: {views}")
            time.sleep(POLL)

    async def await_meta_leader(self, *, within: float = 30.0, not_: Node | None = None) -> Node:
        """`wait_meta_leader` without blocking the caller's event loop."""
        return await asyncio.to_thread(self.wait_meta_leader, within=within, not_=not_)

    async def wait_api(self, *, within: float = 30.0) -> None:
        """Until `$JS.API.INFO` answers without error (meta leader serving)."""
        nc = await self.connect(name="cluster-probe")
        try:
            deadline = time.monotonic() + within
            while True:
                try:
                    if "error" not in await jsapi.request(nc, "$JS.API.INFO", wait=1):
                        return
                except (TimeoutError, nats.errors.Error):
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"JetStream API not answering within {within}s")
                await asyncio.sleep(POLL)
        finally:
            await nc.close()

    async def stream_leader(self, nc: Client, stream: str) -> Node | None:
        """The node leading `stream` (from `STREAM.INFO`'s cluster.leader)."""
        try:
            doc = await jsapi.stream_info(nc, stream, wait=2)
        except (TimeoutError, nats.errors.Error):
            return None
        name = str((doc.get("cluster") or {}).get("leader") or "")
        return self.node(name) if name else None

    async def connected_to(self, client_name: str) -> Node | None:
        """The node a client with this connection name is connected to (`/connz`)."""

        def find() -> Node | None:
            for node in self.live():
                doc = node.monitor("/connz?limit=1024") or {}
                for conn in doc.get("connections") or []:
                    if conn.get("name") == client_name:
                        return node
            return None

        return await asyncio.to_thread(find)

    async def wait_healthy(self, *, within: float = 60.0) -> None:
        """Until every node answers `/healthz` ok: all up and caught up."""
        deadline = time.monotonic() + within
        while not all(await asyncio.to_thread(lambda: [n.healthy() for n in self.nodes])):
            if time.monotonic() > deadline:
                states = {n.name: n.monitor("/healthz") for n in self.nodes}
                raise AssertionError(f"cluster not healthy within {within}s: {states}")
            await asyncio.sleep(POLL)
