"""The opt-in HTTP endpoint: /metrics, /healthz, /readyz and /status.

The daemon builds an `Endpoint` from `[http] listen` (parsed by
`config.values.parse_listen`), a `report.metrics.Metrics` and three
callables of its own: `healthy()` (the
rule that withholds the systemd watchdog ping), `ready()` and `status()`
(the `check --json` document). The endpoint only asks them, on the event
loop, once per request.

It runs on asyncio streams, not on a web framework: four fixed read-only
routes need no routing, middleware or keep-alive, and a framework would add
a dependency tree and idle memory to every host. The parser accepts what a
scraper or a probe sends and nothing more: one request per connection,
GET or HEAD, an origin-form target, no body, a head of at most
`max_request_bytes` that must arrive within `read_timeout` seconds, and at
most `max_connections` at once. The metrics text itself is prometheus-client's.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import errno
import json
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

from kanade_watchdog.config.values import DEFAULT_LISTEN, is_loopback, parse_listen
from kanade_watchdog.report.metrics import CONTENT_TYPE, Metrics

# `[http] listen` is parsed with the rest of the config; named here too, as
# the address this endpoint is documented with.
__all__ = ["DEFAULT_LISTEN", "Endpoint", "EndpointError", "is_loopback", "parse_listen"]

log = logging.getLogger("kanade_watchdog.http")

ROUTES = ("/metrics", "/healthz", "/readyz", "/status")
_ALLOWED = "GET, HEAD"

# RFC 9110 tokens for methods and header names; anything else is a 400.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
_HEADER = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([\x20-\x7e\x80-\xff\t]*?)[ \t]*")

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

_TEXT = "text/plain; charset=utf-8"
_MAX_REASON = 200  # a /readyz reason is one short line


class EndpointError(Exception):
    """The endpoint cannot serve where it was told to (port in use, address not
    on this host, permission denied). One line, naming the address."""


# --- the server ----------------------------------------------------------------------


class _Response:
    __slots__ = ("body", "content_type", "extra", "status")

    def __init__(
        self, status: int, body: bytes, content_type: str = _TEXT, extra: str = ""
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.extra = extra  # further header lines, each ending in CRLF

    @classmethod
    def text(cls, status: int, line: str, extra: str = "") -> _Response:
        return cls(status, (line + "\n").encode(), _TEXT, extra)

    def encode(self, *, head_only: bool) -> bytes:
        head = (
            f"HTTP/1.1 {self.status} {_REASONS[self.status]}\r\n"
            f"Date: {email.utils.formatdate(usegmt=True)}\r\n"
            f"Content-Type: {self.content_type}\r\n"
            f"Content-Length: {len(self.body)}\r\n"
            "Cache-Control: no-store\r\n"
            "X-Content-Type-Options: nosniff\r\n"
            "Connection: close\r\n"
            f"{self.extra}\r\n"
        ).encode("ascii")
        return head if head_only else head + self.body


class Endpoint:
    """The HTTP listener. `start()` binds (or raises `EndpointError`), `stop()`
    closes the listener and every open connection."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        metrics: Metrics,
        healthy: Callable[[], bool],
        ready: Callable[[], tuple[bool, str]],
        status: Callable[[], str | Mapping[str, object]],
        read_timeout: float = 5.0,
        max_request_bytes: int = 8192,
        max_connections: int = 16,
    ) -> None:
        self.host = host
        self._port = port
        self._metrics = metrics
        self._healthy = healthy
        self._ready = ready
        self._status = status
        self._read_timeout = read_timeout
        self._max_request_bytes = max_request_bytes
        self._max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_error: dict[str, str] = {}

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self._port}"

    @property
    def port(self) -> int:
        """The bound port (the chosen one when constructed with port 0)."""
        if self._server is None or not self._server.sockets:
            return self._port
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def connections(self) -> int:
        """Connections being served now."""
        return len(self._writers)

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._accept, self.host, self._port, limit=self._max_request_bytes
            )
        except OSError as exc:
            raise EndpointError(f"http.listen {self.where}: {_bind_problem(exc)}") from exc
        self._port = self.port
        log.info("serving /metrics, /healthz, /readyz and /status on http://%s", self.where)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._writers):
            writer.close()
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=self._read_timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await server.wait_closed()

    # --- one connection ----------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._writers) >= self._max_connections:
            writer.close()  # a flood gets closed sockets, not our memory
            return
        task = asyncio.current_task()  # a stream callback always runs in its own task
        self._writers.add(writer)
        if task is not None:
            self._tasks.add(task)
        try:
            await self._exchange(reader, writer)
        except (ConnectionError, TimeoutError):
            pass  # the client went away or stopped reading: nothing to tell it
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(self._read_timeout):
                    await writer.wait_closed()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head_only = False
        try:
            async with asyncio.timeout(self._read_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return  # closed before a whole request head: no one to answer
        except asyncio.LimitOverrunError:
            response = _Response.text(431, "request head too large")
        except TimeoutError:
            response = _Response.text(408, "request head not received in time")
        else:
            response, head_only = self._handle(head)
        writer.write(response.encode(head_only=head_only))
        async with asyncio.timeout(self._read_timeout):
            await writer.drain()

    def _handle(self, head: bytes) -> tuple[_Response, bool]:
        """The response to one complete request head, and whether it is HEAD."""
        lines = head[:-4].split(b"\r\n")
        request = _REQUEST_LINE.fullmatch(lines[0])
        if request is None:  # the patterns admit no CR, LF or other control byte
            return _Response.text(400, "malformed request line"), False
        method, target, major, minor = request.groups()
        if (major, minor) not in ((b"1", b"0"), (b"1", b"1")):
            return _Response.text(505, "only HTTP/1.0 and HTTP/1.1 are served"), False
        headers: dict[bytes, list[bytes]] = {}
        for line in lines[1:]:
            header = _HEADER.fullmatch(line)
            if header is None:  # includes obsolete line folding and "Name :"
                return _Response.text(400, "malformed header line"), False
            headers.setdefault(header[1].lower(), []).append(header[2])
        if minor == b"1" and len(headers.get(b"host", [])) != 1:
            return _Response.text(400, "HTTP/1.1 needs exactly one Host header"), False
        if not target.startswith(b"/"):
            return _Response.text(400, "only origin-form targets are served"), False
        path = target.partition(b"?")[0].decode("ascii")
        if path not in ROUTES:
            return _Response.text(404, "not found"), False
        if method not in (b"GET", b"HEAD"):
            return _Response.text(405, "only GET and HEAD", f"Allow: {_ALLOWED}\r\n"), False
        if b"transfer-encoding" in headers or headers.get(b"content-length", [b"0"]) != [b"0"]:
            return _Response.text(400, "a request body is not accepted"), False
        return self._route(path), method == b"HEAD"

    def _route(self, path: str) -> _Response:
        try:
            response = self._answer(path)
        except Exception as exc:  # a reporter must never take the daemon down
            text = f"{type(exc).__name__}: {exc}"
            if self._last_error.get(path) != text:  # once per new error, not per scrape
                log.exception("http %s failed: %s", path, text)
            self._last_error[path] = text
            return _Response.text(500, "internal error")
        self._last_error.pop(path, None)
        return response

    def _answer(self, path: str) -> _Response:
        if path == "/metrics":
            return _Response(200, self._metrics.render(), CONTENT_TYPE)
        if path == "/healthz":
            if self._healthy():
                return _Response.text(200, "ok")
            return _Response.text(503, "unhealthy: the worker is not making progress")
        if path == "/readyz":
            ok, reason = self._ready()
            if ok:
                return _Response.text(200, "ready")
            return _Response.text(503, _one_line(reason) or "not ready")
        document = self._status()
        text = document if isinstance(document, str) else json.dumps(document, default=str)
        return _Response(200, (text.rstrip("\n") + "\n").encode(), "application/json")


def _one_line(reason: str) -> str:
    line = " ".join(reason.split())
    return line if len(line) <= _MAX_REASON else line[: _MAX_REASON - 3] + "..."


def _bind_problem(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use (another process listens on this port)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "address not available (no interface of this host has it)"
    if exc.errno == errno.EACCES:
        return "permission denied"
    return exc.strerror or str(exc)
