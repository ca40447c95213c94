"""The daemon's first connection when TLS fails: bounded, explained, retried.

A broker with a certificate of a CA made here (`certs`), and a daemon that
cannot verify it: it trusts another CA, it reaches the broker by a name the
certificate does not carry, or it speaks `nats://` to a broker that requires
TLS. nats-py's close after such a failed handshake never returns; the daemon
must still say why in one line, keep retrying without leaking sockets, and
connect as soon as the certificate (or its own CA file, with SIGHUP) is
fixed. `test_aio` covers the bounding helpers on their own.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.certs import Ca, Cert, make_ca
from tests.daemonproc import DaemonProc, daemon_config, has_message, is_action
from tests.natsserver import NatsServer

RESOURCES = '[streams.ORDERS]\nsubjects = ["orders.>"]\n'


@dataclass(frozen=True)
class Pki:
    ca: Ca
    other_ca: Ca
    server: Cert  # 127.0.0.1 and localhost
    named: Cert  # broker.test only


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = make_ca(root / "ca")
    return Pki(
        ca=ca,
        other_ca=make_ca(root / "other", "other-ca"),
        server=ca.issue("server", dns=("localhost",), ips=("127.0.0.1",)),
        named=ca.issue("named", dns=("broker.test",)),
    )


def tls_broker(tmp_path: Path, cert: Cert, *, port: int | None = None) -> NatsServer:
    conf = f'tls {{\n  cert_file: "{cert.cert}"\n  key_file: "{cert.key}"\n  timeout: 2\n}}\n'
    return NatsServer(tmp_path, port=port, extra_conf=conf)


def with_tls(path: Path, ca_file: Path | None) -> Path:
    """The daemon config at `path` with (or without) a [nats.tls] table."""
    text = path.read_text()
    head, _, rest = text.partition("\n[watchdog]")
    head = head.split("\n[nats.tls]")[0]
    if ca_file is not None:
        head += f'\n[nats.tls]\nca_file = "{ca_file}"\n'
    path.write_text(f"{head}\n[watchdog]{rest}")
    return path


def open_fds(proc: DaemonProc) -> int:
    assert proc.proc is not None
    return len(os.listdir(f"/proc/{proc.proc.pid}/fd"))


def attempts(proc: DaemonProc) -> int:
    """Failed connect attempts so far (the first is a warning, repeats are debug)."""
    return proc.count(has_message("cannot connect yet: "))


@pytest.fixture
def spawn() -> Iterator[Callable[[Path], DaemonProc]]:
    procs: list[DaemonProc] = []

    def start(config: Path) -> DaemonProc:
        proc = DaemonProc(config).start()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.close()
    for proc in procs:
        assert proc.raw == [], "\n".join(proc.raw)


@dataclass(frozen=True)
class Case:
    """One way the first TLS connection fails, and how the operator fixes it."""

    name: str
    broker_cert: str  # Pki field
    trusted: str | None  # the Pki CA the daemon's ca_file holds; None: no [nats.tls]
    reason: str  # in the daemon's one warning line
    fix: str  # "ca-file" (replace it, SIGHUP), "add-tls" (edit, SIGHUP), "broker-cert"


CASES = (
    Case("wrong-ca", "server", "other_ca",
         "TLS handshake failed: certificate verify failed: unable to get local issuer "
         "certificate", "ca-file"),
    Case("name-mismatch", "named", "ca",
         "TLS handshake failed: certificate verify failed: IP address mismatch, certificate "
         "is not valid for '127.0.0.1'", "broker-cert"),
    Case("nats-scheme-to-tls-broker", "server", None,
         "certificate verify failed: unable to get local issuer certificate (the broker "
         "requires TLS: set [nats.tls] ca_file to its CA)", "add-tls"),
)  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_failed_first_tls_connection_is_explained_retried_and_recovers(
    tmp_path: Path, pki: Pki, spawn: Callable[[Path], DaemonProc], case: Case
) -> None:
    """A daemon whose first TLS handshake fails logs one warning with the TLS
    reason (not once per attempt), keeps retrying without leaking sockets,
    and connects and creates its stream once the fault is fixed: the
    broker's certificate replaced, or its own CA file fixed and SIGHUP."""
    broker = tls_broker(tmp_path, getattr(pki, case.broker_cert)).start()
    try:
        ca_file = tmp_path / "ca.pem"
        if case.trusted is not None:
            shutil.copy(getattr(pki, case.trusted).cert, ca_file)
        config = daemon_config(tmp_path / "w.toml", broker.url, resources=RESOURCES)
        with_tls(config, ca_file if case.trusted is not None else None)
        proc = spawn(config)

        [warning] = await proc.wait_for(has_message("cannot connect yet: "), within=10)
        assert warning["level"] == "warning"
        assert case.reason in warning["message"], warning["message"]
        await proc.wait_for(has_message("cannot connect yet: "), n=3, within=10)
        fds = open_fds(proc)
        tried = attempts(proc)
        await proc.wait_for(has_message("cannot connect yet: "), n=tried + 2, within=10)
        assert open_fds(proc) <= fds + 2, "sockets of failed attempts are leaking"
        assert proc.count(lambda line: line.get("level") == "warning") == 1, proc.tail()
        assert proc.find(is_action("ready")) == []

        mark = proc.mark()
        if case.fix == "broker-cert":
            broker.stop()
            broker = tls_broker(tmp_path, pki.server, port=broker.port).start()
        else:
            shutil.copy(pki.ca.cert, ca_file)
            if case.fix == "add-tls":
                with_tls(config, ca_file)
            proc.send(signal.SIGHUP)
        [created] = await proc.wait_for(is_action("created"), after=mark, within=15)
        assert created["stream"] == "ORDERS"
        await proc.wait_for(is_action("ready"), after=mark, within=5)
        proc.send(signal.SIGTERM)
        assert await proc.wait_exit(within=10) == 0
    finally:
        broker.stop()


async def test_sigterm_while_the_first_tls_connection_keeps_failing_exits_0(
    tmp_path: Path, pki: Pki, spawn: Callable[[Path], DaemonProc]
) -> None:
    """A daemon stuck retrying a TLS handshake that fails stops on SIGTERM with
    exit 0, promptly."""
    broker = tls_broker(tmp_path, pki.server).start()
    try:
        config = daemon_config(tmp_path / "w.toml", broker.url, resources=RESOURCES)
        proc = spawn(with_tls(config, pki.other_ca.cert))
        await proc.wait_for(has_message("cannot connect yet: "), n=2, within=10)
        started = asyncio.get_running_loop().time()
        proc.send(signal.SIGTERM)
        assert await proc.wait_exit(within=10) == 0
        assert asyncio.get_running_loop().time() - started < 5.0
    finally:
        broker.stop()
