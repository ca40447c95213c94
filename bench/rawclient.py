"""The floor for the issue-13 tables: what a client written with nothing but
nats-py does, with no planner, no logging and no safety rules.

Library half (used in the benchmark process): stream create configs (the
repo's 25 kanade resources read from config.toml with `tomllib`, or tiny
numbered streams), bounded-concurrency creates, the paged stream list, and
`wait_port` (the moment a broker's port answers).

Process half, `python -m bench.rawclient COMMAND`:
  floor CONFIGS URL   a raw healer: creates every stream as soon as
                      JetStream answers (after a connect or a reconnect), re-creates a
                      stream on its DELETED advisory, reverts one on its UPDATED
                      advisory after one read, runs a full pass (paged list,
                      create the missing) on SIGHUP and on --resync; one JSON line per
                      pass on stdout
  create CONFIGS URL  creates them all once with bounded concurrency, prints a JSON
                      summary (the floor of a one-shot `apply`)

CONFIGS is a JSON file holding a list of complete stream create configs. This
module never imports kanade_watchdog: the configs are derived here, by hand,
from the declaration's TOML text (the ADR-8 and ADR-20 bucket shapes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import socket
import time
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

NS = 1_000_000_000
TWO_MINUTES_NS = 120 * NS
PAGE = 256  # the broker's page for STREAM.LIST
FLOOR_NAME = "bench-floor13"

# --- configs --------------------------------------------------------------------------

_UNITS_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_UNITS_B = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "KB": 1000, "MB": 10**6}


def _ns(value: str | int) -> int:
    if isinstance(value, int):
        return value * NS
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d)", value)
    assert match, value
    return round(int(match.group(1)) * _UNITS_S[match.group(2)] * NS)


def _bytes(value: str | int) -> int:
    if isinstance(value, int):
        return value
    if value == "unlimited":
        return -1
    match = re.fullmatch(r"(\d+)([KMG]i?B|B)", value)
    assert match, value
    return int(match.group(1)) * _UNITS_B[match.group(2)]


def _plain(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {"name": name, "retention": "limits", "num_replicas": 1}
    for key, value in spec.items():
        if key == "max_age":
            config[key] = _ns(value)
        elif key == "max_bytes":
            config[key] = _bytes(value)
        else:
            config[key] = value
    return config


def _kv(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    ttl = _ns(spec["ttl"]) if "ttl" in spec else 0
    return {
        "name": f"KV_{name}",
        "subjects": [f"$KV.{name}.>"],
        "retention": "limits",
        "max_msgs_per_subject": int(spec.get("history", 1)),
        "max_bytes": _bytes(spec.get("max_bytes", -1)),
        "max_age": ttl,
        "storage": "file",
        "discard": "new",
        "num_replicas": 1,
        "duplicate_window": min(ttl, TWO_MINUTES_NS) if ttl else TWO_MINUTES_NS,
        "allow_rollup_hdrs": True,
        "deny_delete": True,
        "allow_direct": True,
    }


def _obj(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": f"OBJ_{name}",
        "subjects": [f"$O.{name}.C.>", f"$O.{name}.M.>"],
        "retention": "limits",
        "max_bytes": _bytes(spec.get("max_bytes", -1)),
        "max_age": _ns(spec["ttl"]) if "ttl" in spec else 0,
        "storage": "file",
        "discard": "new",
        "num_replicas": 1,
        "allow_rollup_hdrs": True,
        "allow_direct": True,
    }
    if config["max_age"]:
        config["duplicate_window"] = min(config["max_age"], TWO_MINUTES_NS)
    return config


def declared_configs(toml_text: str) -> list[dict[str, Any]]:
    """Create configs for every stream, KV bucket and object store a
    declaration (the daemon's TOML) holds, in the same shapes the daemon uses."""
    doc = tomllib.loads(toml_text)
    out = [_plain(n, s) for n, s in doc.get("streams", {}).items()]
    out += [_kv(n, s) for n, s in doc.get("kv_buckets", {}).items()]
    out += [_obj(n, s) for n, s in doc.get("object_stores", {}).items()]
    return out


def tiny_name(i: int) -> str:
    return f"S{i:05d}"


def tiny_config(i: int) -> dict[str, Any]:
    return {"name": tiny_name(i), "subjects": [f"s{i}.>"], "storage": "memory"}


def tiny_toml(n: int) -> str:
    """The TOML tables declaring the same `n` streams as `tiny_config`."""
    return "".join(
        f'\n[streams.{tiny_name(i)}]\nsubjects = ["s{i}.>"]\nstorage = "memory"\n' for i in range(n)
    )


# --- requests -------------------------------------------------------------------------


async def api(nc: Client, subject: str, body: Any = None, *, wait: float = 2.0) -> Any:
    data = json.dumps(body).encode() if body is not None else b""
    msg = await nc.request(subject, data, timeout=wait)
    return json.loads(msg.data)


async def create(nc: Client, config: Mapping[str, Any], *, wait: float = 5.0) -> str:
    """'' on success (or an identical stream already there), else the error text."""
    try:
        answer = await api(nc, f"$JS.API.STREAM.CREATE.{config['name']}", config, wait=wait)
    except (nats.errors.Error, TimeoutError) as exc:
        return type(exc).__name__
    error = answer.get("error")
    return "" if not error else f"{error.get('err_code')} {error.get('description')}"


async def create_all(
    nc: Client, configs: Iterable[Mapping[str, Any]], *, concurrency: int = 64
) -> list[str]:
    """Every config created with at most `concurrency` requests in flight;
    returns the failures' texts."""
    gate = asyncio.Semaphore(concurrency)

    async def one(config: Mapping[str, Any]) -> str:
        async with gate:
            return await create(nc, config)

    results = await asyncio.gather(*(one(c) for c in configs))
    return [r for r in results if r]


async def list_streams(nc: Client, *, wait: float = 10.0) -> dict[str, dict[str, Any]]:
    """name -> config, one STREAM.LIST request per page."""
    out: dict[str, dict[str, Any]] = {}
    offset = 0
    while True:
        answer = await api(nc, "$JS.API.STREAM.LIST", {"offset": offset}, wait=wait)
        page = answer.get("streams") or []
        for item in page:
            out[item["config"]["name"]] = item["config"]
        offset += len(page)
        if not page or offset >= int(answer.get("total", 0)):
            return out


async def stream_names(nc: Client, *, wait: float) -> set[str]:
    """Every stream name (STREAM.NAMES pages hold 1,024)."""
    out: set[str] = set()
    offset = 0
    while True:
        answer = await api(nc, "$JS.API.STREAM.NAMES", {"offset": offset}, wait=wait)
        page = answer.get("streams") or []
        out.update(page)
        offset += len(page)
        if not page or offset >= int(answer.get("total", 0)):
            return out


def wait_port(port: int, *, timeout: float = 30.0) -> float:
    """Poll (every millisecond) until the port greets with INFO; returns
    time.perf_counter() at that moment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                if s.recv(4).startswith(b"INFO"):
                    return time.perf_counter()
        except OSError:
            time.sleep(0.001)
    raise RuntimeError(f"port {port} did not answer within {timeout}s")


# --- the floor healer process ---------------------------------------------------------


def _emit(event: str, **values: Any) -> None:
    print(json.dumps({"event": event, "ts": time.time(), **values}), flush=True)


class Floor:
    # what the healer listens to; each message goes to on_advisory
    advisories: tuple[str, ...] = ("$JS.EVENT.ADVISORY.STREAM.*.*",)

    def __init__(self, path: Path, url: str, reconnect_wait: float) -> None:
        self.path = path
        self.url = url
        self.reconnect_wait = reconnect_wait
        self.configs: dict[str, dict[str, Any]] = {}
        self.nc: Client | None = None
        self.passes = 0
        self._pass_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def load(self) -> None:
        self.configs = {c["name"]: c for c in json.loads(self.path.read_text())}

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def js_ready(self) -> None:
        """A short, fast-retried probe: JetStream answers $JS.API.INFO."""
        assert self.nc is not None
        while True:
            try:
                await self.nc.request("$JS.API.INFO", b"", timeout=0.05)
            except nats.errors.NoRespondersError:
                await asyncio.sleep(0.005)
            except (nats.errors.Error, TimeoutError):
                await asyncio.sleep(0)
            else:
                return

    async def create_everything(self, why: str) -> None:
        assert self.nc is not None
        await self.js_ready()
        pending = list(self.configs.values())
        for _ in range(50):
            failures = await asyncio.gather(*(create(self.nc, c, wait=2) for c in pending))
            pending = [c for c, f in zip(pending, failures, strict=True) if f]
            if not pending:
                break
            await asyncio.sleep(0.01)
        _emit("created", why=why, failed=len(pending))

    async def full_pass(self, why: str) -> None:
        assert self.nc is not None
        async with self._pass_lock:
            if why == "reload":
                self.load()
            started = time.perf_counter()
            observed = await list_streams(self.nc)
            missing = []
            for name, config in self.configs.items():
                have = observed.get(name)
                if have is None or any(have.get(k) != v for k, v in config.items()):
                    missing.append(config)
            failures = await create_all(self.nc, missing)
            self.passes += 1
            _emit(
                "pass",
                why=why,
                looked_at=len(self.configs),
                created=len(missing) - len(failures),
                ms=(time.perf_counter() - started) * 1000,
            )

    async def on_advisory(self, msg: Msg) -> None:
        # nats-py runs one subscription's callbacks one at a time: awaiting the
        # request here would cap the heals at one per round trip.
        verb, stream = msg.subject.split(".")[-2:]
        config = self.configs.get(stream)
        if config is None:
            return
        if verb == "DELETED":
            self.spawn(self._recreate(config))
        elif verb == "UPDATED":
            self.spawn(self._revert(config))

    async def _recreate(self, config: dict[str, Any]) -> None:
        assert self.nc is not None
        for _ in range(20):
            # 10049-style refusals while the broker still removes the old files
            if not await create(self.nc, config, wait=2):
                return
            await asyncio.sleep(0.01)

    async def _revert(self, config: dict[str, Any]) -> None:
        """One read; an update only when a field of ours differs (our own
        update fires UPDATED too)."""
        assert self.nc is not None
        info = await api(self.nc, f"$JS.API.STREAM.INFO.{config['name']}")
        have = info.get("config")
        if have and any(have.get(k) != v for k, v in config.items()):
            subject = f"$JS.API.STREAM.UPDATE.{config['name']}"
            await api(self.nc, subject, {**have, **config})

    async def run(self, resync: float) -> None:
        self.load()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self.spawn(self.full_pass("reload")))

        async def reconnected() -> None:
            self.spawn(self.create_everything("reconnect"))

        async def quiet(_exc: Exception) -> None:
            return

        # Blocks until a server answers, trying every `reconnect_wait`.
        self.nc = await nats.connect(
            self.url,
            name=FLOOR_NAME,
            max_reconnect_attempts=-1,
            reconnect_time_wait=self.reconnect_wait,
            connect_timeout=0.5,
            reconnected_cb=reconnected,
            error_cb=quiet,
        )
        for subject in self.advisories:
            await self.nc.subscribe(subject, cb=self.on_advisory)
        await self.create_everything("connect")
        _emit("ready")
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), resync)
            if not stop.is_set():
                await self.full_pass("resync")
        await self.nc.close()


async def _create_command(configs: list[dict[str, Any]], url: str, concurrency: int) -> None:
    started = time.perf_counter()
    nc = await nats.connect(url, name=FLOOR_NAME)
    failures = await create_all(nc, configs, concurrency=concurrency)
    await nc.close()
    print(
        json.dumps(
            {
                "created": len(configs) - len(failures),
                "failed": len(failures),
                "seconds": time.perf_counter() - started,
                "sample": failures[:3],
            }
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    floor = sub.add_parser("floor")
    floor.add_argument("configs", type=Path)
    floor.add_argument("url")
    floor.add_argument("--reconnect-wait", type=float, default=0.02)
    floor.add_argument("--resync", type=float, default=3600.0)
    make = sub.add_parser("create")
    make.add_argument("configs", type=Path)
    make.add_argument("url")
    make.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)
    if args.command == "floor":
        asyncio.run(Floor(args.configs, args.url, args.reconnect_wait).run(args.resync))
    else:
        configs = json.loads(args.configs.read_text())
        asyncio.run(_create_command(configs, args.url, args.concurrency))


if __name__ == "__main__":
    main()
