"""Raw JetStream API requests, the way any client sends them, and quiet test clients.

Tests judge the broker through these, not through nats-py's JetStream
manager or the code under test: a request subject and a JSON body in, the
broker's JSON answer out. `request` returns an error answer as it comes
(`{"error": {...}}`); `ok` fails the test on one. `connect` is a second
client that rides out broker kills without a traceback per attempt.
Shared by the fault suite (`chaos`), the cluster tests, the one-shot
command helpers (`helpers_streams`) and the benchmarks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import nats
from nats.aio.client import Client

TIMEOUT = 5.0  # seconds; an election on a cluster takes a few


def _payload(body: Mapping[str, Any] | bytes | None) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    return json.dumps(body).encode()


async def request(
    nc: Client,
    subject: str,
    body: Mapping[str, Any] | bytes | None = None,
    *,
    wait: float = TIMEOUT,
) -> dict[str, Any]:
    """One request on `$JS.API.*`; the broker's answer, error answers included.
    No answer in time raises nats-py's TimeoutError."""
    msg = await nc.request(subject, _payload(body), timeout=wait)
    answer = json.loads(msg.data)
    assert isinstance(answer, dict), msg.data[:200]
    return answer


async def ok(
    nc: Client,
    subject: str,
    body: Mapping[str, Any] | bytes | None = None,
    *,
    wait: float = TIMEOUT,
) -> dict[str, Any]:
    """`request`, and an error answer fails the test (naming the subject)."""
    answer = await request(nc, subject, body, wait=wait)
    assert "error" not in answer, (subject, answer)
    return answer


async def stream_info(nc: Client, stream: str, *, wait: float = TIMEOUT) -> dict[str, Any]:
    """`$JS.API.STREAM.INFO.<stream>` as the broker answers it, errors included."""
    return await request(nc, f"$JS.API.STREAM.INFO.{stream}", wait=wait)


async def quiet_error(_exc: Exception) -> None:
    """A test client's error callback: brokers killed on purpose are expected."""


async def connect(url: str | list[str], name: str, **options: Any) -> Client:
    """A test client that reconnects forever, quickly, and quietly."""
    settings: dict[str, Any] = {
        "servers": url,
        "name": name,
        "reconnect_time_wait": 0.02,
        "max_reconnect_attempts": -1,
        "connect_timeout": 1,
        "error_cb": quiet_error,
    }
    settings.update(options)
    return await nats.connect(**settings)
