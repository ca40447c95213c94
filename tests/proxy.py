"""A loopback TCP relay that can stall, drop, resume, cut and refuse, in the test's loop.

`stall()` stops forwarding in both directions without closing anything: the
bytes already sent wait in the relay, in order, exactly what a wedged
switch or a frozen peer looks like from either end (`stall(upstream=True)`
holds only what clients send). `resume()` lets them through in order, so a
connection that was not given up on carries on. `cut()` closes every
relayed connection, dropping whatever it still held (both ends see a reset
path). `drop()` forwards what the broker sends but throws away what clients
send (requests vanish, the connection stays up) until `resume()` or `cut()`.
`hold_replies_after(marker)` lets requests through but holds every answer
from the moment a client sends `marker`: requests delivered and carried out
whose outcome the client never learns. `refuse(True)` closes new
connections as soon as they are accepted (a port that answers and hangs
up). The daemon is pointed at `url`; the test's own clients talk to the
broker directly. `accepted` counts connections (reconnect attempts show
there) and `last_upstream` is when a client last sent bytes (wall clock, as
the daemon stamps its log lines), held or not. Shared by the fault suite,
the daemon tests and the soak.
"""

from __future__ import annotations

import asyncio
import contextlib
import time


class StallProxy:
    def __init__(self, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.host = host
        self.target_port = target_port
        self.port = 0
        self.accepted = 0  # connections accepted so far (reconnect attempts show here)
        self._up = asyncio.Event()  # client -> broker may flow
        self._down = asyncio.Event()  # broker -> client may flow
        self._up.set()
        self._down.set()
        self._refusing = False
        self._dropping = False
        self._reply_trigger = b""  # hold replies once a client sends this
        self.last_upstream = 0.0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def stalled(self) -> bool:
        return not (self._up.is_set() and self._down.is_set())

    async def start(self) -> StallProxy:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def stall(self, *, upstream: bool = False) -> None:
        """Stop forwarding (only what clients send, with `upstream`)."""
        self._up.clear()
        if not upstream:
            self._down.clear()

    def hold_replies_after(self, marker: bytes) -> None:
        """Once a client sends `marker` (a request subject, say), stop forwarding
        what the broker sends, before it can answer: that request and those
        after it are delivered and carried out, their answers held until
        `resume()`. `stalled` tells when it happened."""
        self._reply_trigger = marker

    def drop(self) -> None:
        """Throw away what clients send from now on (the broker's side flows)."""
        self._dropping = True

    def resume(self) -> None:
        self._dropping = False
        self._reply_trigger = b""
        self._up.set()
        self._down.set()

    def refuse(self, refusing: bool) -> None:
        self._refusing = refusing

    async def cut(self) -> None:
        """Close every relayed connection now (new ones are relayed as before,
        and no longer dropped; a stall stays until `resume`)."""
        self._dropping = False
        writers, self._writers = self._writers, set()
        for writer in writers:
            writer.close()
        for writer in writers:
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()

    async def close(self) -> None:
        self.resume()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._refusing:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.target_port), timeout=2.0
            )
        except (OSError, TimeoutError):
            writer.close()
            return
        self._writers |= {writer, up_writer}
        ends = (writer, up_writer)
        for source, sink, upstream in ((reader, up_writer, True), (up_reader, writer, False)):
            chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
            for job in (
                self._read(source, chunks, upstream=upstream),
                self._forward(chunks, sink, upstream=upstream, ends=ends),
            ):
                task = asyncio.create_task(job)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _read(
        self, reader: asyncio.StreamReader, chunks: asyncio.Queue[bytes | None], *, upstream: bool
    ) -> None:
        """Read as bytes arrive, stalled or not: a held chunk waits in `chunks`,
        in order, and its arrival is seen (`last_upstream`)."""
        tail = b""  # a marker may straddle two reads
        try:
            while data := await reader.read(65536):
                if upstream:
                    self.last_upstream = time.time()
                    if self._dropping:
                        continue
                    trigger = self._reply_trigger
                    if trigger and trigger in tail + data:
                        self._reply_trigger = b""
                        self._down.clear()  # before this chunk can reach the broker
                    tail = data[-len(trigger) :] if trigger else b""
                chunks.put_nowait(data)
        except (OSError, ConnectionError):
            pass
        finally:
            chunks.put_nowait(None)

    async def _forward(
        self,
        chunks: asyncio.Queue[bytes | None],
        writer: asyncio.StreamWriter,
        *,
        upstream: bool,
        ends: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        gate = self._up if upstream else self._down
        try:
            while (data := await chunks.get()) is not None:
                await gate.wait()
                if writer.is_closing():
                    break  # cut meanwhile: what it held is dropped
                writer.write(data)
                await writer.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            # One side gone: close both, as a real path would end up doing.
            for end in ends:
                end.close()
                self._writers.discard(end)
