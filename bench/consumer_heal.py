"""Durable consumers: heal latency, the cost of a full verification, and the
replay bound of a re-created consumer, black box.

The daemon (`python -m kanade_watchdog run --log-format json`) and the floor
(`bench.consumer_floor`, nats-py only: it re-creates a consumer on its
CONSUMER.DELETED advisory, and a stream on its STREAM.DELETED advisory
followed by the stream's consumers) each run against a nats-server of their
own, declaring the same streams and pull consumers (explicit acks).

1. Heal after a consumer delete: stream CB00 with 5 declared consumers; per
   trial an observer deletes one of them (in turn) and waits for its
   CONSUMER.CREATED advisory, then reads CONSUMER.INFO; healed = the info
   answers with a config. Time = from the delete request returning.
2. Heal after a stream delete: the observer deletes CB00 and waits for the
   stream's CREATED advisory and the 5 consumers' CREATED advisories, then
   reads CONSUMER.LIST.CB00; healed = all 5 durables listed.
   Both rows also count the healer's CREATE requests and all its requests
   on the broker's API audit ($JS.EVENT.ADVISORY.API), to show a heal sent
   once, and the faults whose DELETED advisory never came (nats-server
   2.15.1 at times sends no STREAM.DELETED for a stream with consumers). A
   heal not seen within 10 s is counted, then repaired by a SIGHUP (untimed).
3. One full verification of STREAMS x CONSUMERS (25 x 10 by default), all in
   sync: SIGHUP, then every $JS.API request the healer made until its
   end-of-pass line (the daemon's `pass (reload)` debug line, the floor's
   JSON `pass` line), counted on the audit; pass time = first audited
   request -> that line. The floor checks with the paged stream list, then
   either each stream's paged CONSUMER.LIST or one CONSUMER.INFO per consumer.
4. The replay bound (daemon only, resync_interval 500 ms): per round N
   messages are published, a client pulls and acks M (raw pull requests,
   each ack confirmed; the broker's ack floor is checked), waits until the
   audit shows two CONSUMER.LIST reads of the stream by the daemon (it has
   observed the ack floor), acks K more, and deletes the consumer; after the
   heal it pulls everything and counts deliveries of already-acked messages
   (redelivered; the bound says <= K) and unacked messages never delivered
   (skipped; must be 0), then acks all. The same rounds on a consumer
   declared with `resume = false` (deliver_policy "all") for contrast. A
   re-created consumer that has delivered something before the first pull
   (nats-server can hand it the deleted one's stored state) is marked not
   fresh, noted under the table, and deleted once more before the next round.

Run: python -m bench.consumer_heal [--quick] [--trials 300] [--rounds 6]
     [--scale 25x10] [--storage file]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from bench import consumer_floor as cf
from bench import rawclient as rc
from bench.procs import (
    Audit,
    Proc,
    client_name,
    daemon_toml,
    header,
    is_ready,
    p50_p99_max,
    pass_line,
    write_json,
)
from tests.daemonproc import eventually
from tests.natsserver import NatsServer

HEALERS = ("kanade-watchdog", "floor (nats-py)")
HEAL_CONSUMERS = 5
REFUSALS = 50  # consecutive refused faults: the broker is stuck, not racing
WITHIN = 10.0  # seconds for one heal

# --- a healer on a broker of its own --------------------------------------------------


@contextmanager
def healer(
    floor: bool,
    doc: dict[str, Any],
    *,
    check: str = "list",
) -> Iterator[tuple[NatsServer, Proc]]:
    """A fresh broker and the daemon (debug level, resync an hour away) or
    the floor (checking with `check` on SIGHUP) on it, ready."""
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        srv = NatsServer(tmp).start()
        try:
            if floor:
                path = write_json(tmp / "layout.json", doc)
                argv = [sys.executable, "-m", "bench.consumer_floor", str(path), srv.url]
                proc = Proc([*argv, "--check", check], stream="stdout")
            else:
                conf = tmp / "daemon.toml"
                settings: dict[str, str | bool] = {"resync_interval": "1h"}
                conf.write_text(daemon_toml(srv.url, cf.layout_toml(doc), watchdog=settings))
                proc = Proc.daemon(conf)
            try:
                asyncio.run(proc.wait_for(is_ready, within=120))
                yield srv, proc
            finally:
                proc.stop()
        finally:
            srv.stop()


class Observer:
    """CREATED advisories of streams and consumers by name ('S' or 'S/D'),
    with their arrival time, and the broker's API audit."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.created: dict[str, float] = {}
        self.deleted: dict[str, float] = {}
        self.changed = asyncio.Event()
        self.audit = Audit()

    async def start(self) -> Observer:
        await self.nc.subscribe("$JS.EVENT.ADVISORY.STREAM.CREATED.*", cb=self._on_created)
        await self.nc.subscribe("$JS.EVENT.ADVISORY.CONSUMER.CREATED.*.*", cb=self._on_created)
        await self.nc.subscribe("$JS.EVENT.ADVISORY.STREAM.DELETED.*", cb=self._on_deleted)
        await self.nc.subscribe("$JS.EVENT.ADVISORY.CONSUMER.DELETED.*.*", cb=self._on_deleted)
        await self.audit.start(self.nc)
        return self

    async def _on_created(self, msg: Msg) -> None:
        self.created["/".join(msg.subject.split(".")[5:])] = time.perf_counter()
        self.changed.set()

    async def _on_deleted(self, msg: Msg) -> None:
        self.deleted["/".join(msg.subject.split(".")[5:])] = time.perf_counter()

    async def until(
        self, names: list[str], after: float, confirm: Callable[[], Awaitable[bool]]
    ) -> float:
        """perf_counter() once every name had a CREATED advisory since `after`
        and `confirm()` holds."""
        deadline = time.monotonic() + WITHIN
        while True:
            self.changed.clear()
            if all(self.created.get(n, -1.0) >= after for n in names) and await confirm():
                return time.perf_counter()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                late = [n for n in names if self.created.get(n, -1.0) < after]
                raise RuntimeError(f"not healed within {WITHIN}s; no CREATED advisory: {late}")
            with suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(remaining, 0.05))

    async def consumer_back(self, stream: str, durable: str) -> bool:
        answer = await rc.api(self.nc, f"$JS.API.CONSUMER.INFO.{stream}.{durable}", wait=2)
        return "config" in answer

    def creates(self, who: str, since: float) -> tuple[int, int]:
        """The healer's (STREAM.CREATE, CONSUMER.CREATE) requests since `since`."""
        times = self.audit.times
        return len(times(who, "STREAM.CREATE", since=since)), len(
            times(who, "CONSUMER.CREATE", since=since)
        )


def refusal(answer: dict[str, Any]) -> str:
    error = answer.get("error")
    return "" if not error else f"{error.get('err_code')} {error.get('description')}"


# --- 1 and 2: heal latency -------------------------------------------------------------


@dataclass
class HealRow:
    fault: str
    samples: list[float] = field(default_factory=list)
    stream_creates: int = 0
    consumer_creates: int = 0
    note: str = ""
    no_deleted_advisory: int = 0  # faults whose DELETED advisory the observer never saw
    requests: int = 0  # every $JS.API request of the healer during the row
    unhealed: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.unhealed)


async def _heal_rows(url: str, floor: bool, trials: int, proc: Proc) -> list[HealRow]:
    stream = cf.stream_name(0)
    durables = [cf.durable_name(j) for j in range(HEAL_CONSUMERS)]
    nc = await nats.connect(url, name="bench-consumer-observer")
    obs = await Observer(nc).start()
    rows: list[HealRow] = []
    for fault in ("consumer", "stream"):
        row = HealRow(fault)
        refused = 0
        since = time.time()
        last: tuple[str, float] | None = None  # the previous fault's resource and time
        while True:
            await asyncio.sleep(0.02)  # the healer's own echo settles
            if last is not None and obs.deleted.get(last[0], -1.0) < last[1]:
                row.no_deleted_advisory += 1
            if len(row.samples) >= trials:
                break
            durable = durables[len(row.samples) % len(durables)]
            if fault == "consumer":
                subject = f"$JS.API.CONSUMER.DELETE.{stream}.{durable}"
                names = [f"{stream}/{durable}"]

                async def confirm(d: str = durable) -> bool:
                    return await obs.consumer_back(stream, d)
            else:
                subject = f"$JS.API.STREAM.DELETE.{stream}"
                names = [stream, *(f"{stream}/{d}" for d in durables)]

                async def confirm(d: str = durable) -> bool:
                    return (await cf.consumer_names(nc, stream) or set()) >= set(durables)

            sent = time.perf_counter()
            if error := refusal(await rc.api(nc, subject, wait=5)):
                refused += 1
                if refused == REFUSALS:
                    row.note = f"refused {refused} times in a row, cut short: {error}"
                    break
                await asyncio.sleep(0.02)
                continue
            refused = 0
            last = (names[0], sent)
            t0 = time.perf_counter()
            try:
                row.samples.append((await obs.until(names, sent, confirm) - t0) * 1000)
            except RuntimeError as exc:
                # not healed: counted, then repaired (untimed) by a full pass
                row.unhealed.append(f"trial {len(row.samples) + row.failed + 1}: {exc}")
                proc.signal()
                await eventually(confirm, within=WITHIN, what="the full pass's repair")
        await asyncio.sleep(0.3)
        await nc.flush()
        row.stream_creates, row.consumer_creates = obs.creates(client_name(floor), since)
        row.requests = len(obs.audit.times(client_name(floor), "", since=since))
        rows.append(row)
    await nc.close()
    return rows


def heal_tables(trials: int, storage: str, command: str) -> list[str]:
    doc = cf.layout(1, HEAL_CONSUMERS, storage=storage)
    results: dict[str, list[HealRow]] = {}
    for floor, who in zip((False, True), HEALERS, strict=True):
        with healer(floor, doc) as (srv, proc):
            time.sleep(0.5)
            results[who] = asyncio.run(_heal_rows(srv.url, floor, trials, proc))
    out: list[str] = []
    titles = {
        "consumer": "Heal after a consumer delete (1 of 5 declared on the stream)",
        "stream": f"Heal after a stream delete, until the stream and its {HEAL_CONSUMERS} "
        "consumers are back",
    }
    for index, title in enumerate(titles.values()):
        out += header(f"{title}, {storage} storage", command)
        out += [
            f"| healer | healed | p50 ms | p99 ms | max ms | not healed in {WITHIN:.0f} s "
            "| stream creates | consumer creates | requests per heal | no DELETED advisory |"
        ]
        out += ["|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        notes = []
        for who, rows in results.items():
            row = rows[index]
            stats = p50_p99_max(row.samples, "{:.2f}")
            per_heal = row.requests / max(1, len(row.samples) + row.failed)
            out.append(
                f"| {who} | {len(row.samples)} | {stats} | {row.failed} | {row.stream_creates} "
                f"| {row.consumer_creates} | {per_heal:.1f} | {row.no_deleted_advisory} |"
            )
            notes += [f"- {who}: {text}" for text in (row.note, *row.unhealed[:3]) if text]
        out += ["", *notes] if notes else []
    return out


# --- 3: one full verification -----------------------------------------------------------


async def _verify_rounds(
    proc: Proc, floor: bool, url: str, rounds: int
) -> list[tuple[int, str, float]]:
    """(requests, by verb, pass ms) per SIGHUP."""
    nc = await nats.connect(url, name="bench-consumer-observer")
    audit = await Audit().start(nc)
    who = client_name(floor)
    out = []
    for _ in range(rounds):
        await proc.quiet(0.5)
        mark = proc.mark()
        t_sig = time.time()
        proc.signal()
        done = await proc.wait_for(pass_line("reload"), after=mark, within=120)
        await nc.flush()
        await asyncio.sleep(0.5)  # the audit's advisories come after the answers
        events = [(t, v) for t, v in audit.events[who] if t >= t_sig]
        verbs: dict[str, int] = {}
        for _, v in events:
            key = ".".join(v.split(".")[:2])
            verbs[key] = verbs.get(key, 0) + 1
        first = min(t for t, _ in events)
        end = float(done.get("ts") or done["_seen"])
        by_verb = ", ".join(f"{n} {v}" for v, n in sorted(verbs.items()))
        out.append((len(events), by_verb, (end - first) * 1000))
    await nc.close()
    return out


def verify_table(streams: int, consumers: int, rounds: int, command: str) -> list[str]:
    doc = cf.layout(streams, consumers, storage="memory")
    total = streams * consumers
    out = header(
        f"One full verification, {streams} memory streams x {consumers} consumers ({total}), "
        "in sync",
        command,
    )
    out += [
        "| healer | check | rounds | requests per pass | requests by verb | pass ms p50 | max |"
    ]
    out += ["|---|---|---:|---:|---|---:|---:|"]
    runs = (
        (False, "list", HEALERS[0], "SIGHUP full pass"),
        (True, "list", HEALERS[1], "paged CONSUMER.LIST per stream"),
        (True, "info", HEALERS[1], "CONSUMER.INFO per consumer"),
    )
    for floor, check, who, what in runs:
        with healer(floor, doc, check=check) as (srv, proc):
            results = asyncio.run(_verify_rounds(proc, floor, srv.url, rounds))
        counts = sorted({n for n, _, _ in results})
        times = [ms for _, _, ms in results]
        cells = p50_p99_max(times).split(" | ")
        requests = "/".join(str(n) for n in counts)
        out.append(
            f"| {who} | {what} | {len(results)} | {requests} | {results[-1][1]} "
            f"| {cells[0]} | {cells[2]} |"
        )
    return out


# --- 4: the replay bound --------------------------------------------------------------------

REPLAY_STREAM = "RB"
RESUMER, FROM_START = "resumer", "fromstart"
REPLAY_TOML = f"""
[streams.{REPLAY_STREAM}]
subjects = ["rb.>"]
storage = "file"

[consumers.{REPLAY_STREAM}.{RESUMER}]
ack_policy = "explicit"
ack_wait = "30s"

[consumers.{REPLAY_STREAM}.{FROM_START}]
ack_policy = "explicit"
ack_wait = "30s"
deliver_policy = "all"
resume = false
"""


@dataclass
class Replay:
    durable: str
    k: int
    redelivered: int
    skipped: int
    resumed_at: int | None
    acked_before: int
    state: str = ""  # the re-created consumer's state when it was not a fresh one

    @property
    def fresh(self) -> bool:
        return not self.state


async def _pull(nc: Client, durable: str, batch: int) -> list[Msg]:
    """One raw pull request for `batch` messages (no_wait: what is there, up
    to `batch`, then a status). Raw on purpose: a request that outlives its
    subscription would take messages to nobody and hold the ack floor."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    request = {"batch": batch, "no_wait": True}
    subject = f"$JS.API.CONSUMER.MSG.NEXT.{REPLAY_STREAM}.{durable}"
    await nc.publish(subject, json.dumps(request).encode(), reply=inbox)
    out: list[Msg] = []
    try:
        while len(out) < batch:
            msg = await sub.next_msg(timeout=5)
            if msg.headers and "Status" in msg.headers:
                break  # 404 no messages / 408 the request is done
            out.append(msg)
    finally:
        await sub.unsubscribe()
    return out


async def _take(nc: Client, durable: str, count: int | None) -> list[int]:
    """Pull and ack (each acknowledged by the broker) `count` messages, or all
    there are when None; their stream sequences in delivery order."""
    seqs: list[int] = []
    while count is None or len(seqs) < count:
        msgs = await _pull(nc, durable, 256 if count is None else count - len(seqs))
        if not msgs:
            if count is None:
                return seqs
            raise RuntimeError(f"{durable}: {len(seqs)} of {count} messages delivered")
        for msg in msgs:
            await msg.ack_sync()
            seqs.append(msg.metadata.sequence.stream)
    return seqs


async def _ack_floor(nc: Client, durable: str) -> tuple[int, int]:
    """The broker's ack floor (stream sequence) and unacked count for `durable`."""
    info = await rc.api(nc, f"$JS.API.CONSUMER.INFO.{REPLAY_STREAM}.{durable}")
    return int(info["ack_floor"]["stream_seq"]), int(info["num_ack_pending"])


async def _heal_of(nc: Client, obs: Observer, durable: str) -> dict[str, Any]:
    """Delete `durable`, wait for the daemon's re-create; its CONSUMER.INFO."""
    sent = time.perf_counter()
    answer = await rc.api(nc, f"$JS.API.CONSUMER.DELETE.{REPLAY_STREAM}.{durable}")
    assert not refusal(answer), answer

    async def back() -> bool:
        return await obs.consumer_back(REPLAY_STREAM, durable)

    await obs.until([f"{REPLAY_STREAM}/{durable}"], sent, back)
    info: dict[str, Any] = await rc.api(nc, f"$JS.API.CONSUMER.INFO.{REPLAY_STREAM}.{durable}")
    return info


def _not_fresh(info: dict[str, Any]) -> str:
    """'' for a consumer that has delivered nothing yet, else its state."""
    delivered, floor = info["delivered"], info["ack_floor"]
    if not delivered["consumer_seq"] and not info["num_ack_pending"]:
        return ""
    return (
        f"delivered to stream sequence {delivered['stream_seq']} (consumer sequence "
        f"{delivered['consumer_seq']}), ack floor {floor['stream_seq']}, "
        f"{info['num_ack_pending']} awaiting an ack"
    )


async def _replay_round(
    nc: Client, obs: Observer, durable: str, *, k: int, m: int, published: int, acked: int
) -> Replay:
    who = client_name(False)
    seqs = await _take(nc, durable, m)
    assert seqs == list(range(acked + 1, acked + m + 1)), (durable, seqs[:5], acked)
    # observed: two reads of the stream's consumers after the acks
    t = time.time()

    async def observed() -> bool:
        return len(obs.audit.times(who, f"CONSUMER.LIST.{REPLAY_STREAM}", since=t)) >= 2

    await eventually(observed, what="two reads of the consumers")
    seqs += await _take(nc, durable, k)
    floor = seqs[-1]
    assert await _ack_floor(nc, durable) == (floor, 0), durable
    info = await _heal_of(nc, obs, durable)
    config = info["config"]
    resumed = config.get("opt_start_seq") if config["deliver_policy"] != "all" else None
    state = _not_fresh(info)
    delivered = await _take(nc, durable, None)
    return Replay(
        durable,
        k,
        redelivered=sum(1 for s in delivered if s <= floor),
        skipped=len(set(range(floor + 1, published + 1)) - set(delivered)),
        resumed_at=resumed,
        acked_before=floor,
        state=state,
    )


async def _replay_rounds(url: str, ks: list[int], n: int, m: int) -> list[Replay]:
    nc = await nats.connect(url, name="bench-consumer-client")
    js = nc.jetstream()
    obs = await Observer(nc).start()
    published = 0
    out: list[Replay] = []
    for k in ks:
        for i in range(n):
            await js.publish(f"rb.{i % 7}", b"x")  # stored before the round starts
        published += n
        for durable in (RESUMER, FROM_START):
            acked = published - n
            out.append(
                await _replay_round(nc, obs, durable, k=k, m=m, published=published, acked=acked)
            )
            if await _ack_floor(nc, durable) != (published, 0):
                # A consumer that did not start fresh holds deliveries nobody
                # got until ack_wait ends: delete it once more (the daemon
                # re-creates it) and take everything, so the next round
                # starts clean.
                for _ in range(5):
                    await _heal_of(nc, obs, durable)
                    await _take(nc, durable, None)
                    if await _ack_floor(nc, durable) == (published, 0):
                        break
                else:
                    raise RuntimeError(f"{durable}: could not start clean again")
    await nc.close()
    return out


def replay_table(rounds: int, command: str) -> list[str]:
    n, m = 100, 50
    ks = [[0, 1, 5, 10, 25, 49][i % 6] for i in range(rounds)]
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        srv = NatsServer(tmp).start()
        conf = tmp / "daemon.toml"
        settings: dict[str, str | bool] = {"resync_interval": "500ms", "resync_jitter": "0s"}
        conf.write_text(daemon_toml(srv.url, REPLAY_TOML, watchdog=settings))
        proc = Proc.daemon(conf)
        try:
            asyncio.run(proc.wait_for(is_ready, within=60))
            results = asyncio.run(_replay_rounds(srv.url, ks, n, m))
        finally:
            proc.stop()
            srv.stop()
    out = header(
        f"Replay after a re-create: {n} published per round, {m} acked, observed, K more acked, "
        "consumer deleted",
        command,
    )
    out += [
        "| consumer | round | acked before the delete | K | re-created at (opt_start_seq) "
        "| started fresh | redelivered | skipped | redelivered <= K |"
    ]
    out += ["|---|---:|---:|---:|---:|---|---:|---:|---|"]
    notes = []
    for i, r in enumerate(results):
        what = "resume = true" if r.durable == RESUMER else 'resume = false, deliver "all"'
        at = "-" if r.resumed_at is None else str(r.resumed_at)
        out.append(
            f"| {what} | {i // 2 + 1} | {r.acked_before} | {r.k} | {at} "
            f"| {'yes' if r.fresh else 'no'} | {r.redelivered} | {r.skipped} "
            f"| {'yes' if r.redelivered <= r.k else 'no'} |"
        )
        if not r.fresh:
            notes.append(f"- round {i // 2 + 1}, {what}: right after the re-create, {r.state}")
    return out + (["", *notes] if notes else [])


# --- the command ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="30 trials, 2 rounds")
    parser.add_argument("--trials", type=int, default=None, help="heal trials per row (300)")
    parser.add_argument("--rounds", type=int, default=None, help="verification/replay rounds (6)")
    parser.add_argument("--scale", default="25x10", help="STREAMSxCONSUMERS for table 3")
    parser.add_argument("--storage", choices=("file", "memory"), default="file")
    args = parser.parse_args(argv)
    trials = args.trials or (30 if args.quick else 300)
    rounds = args.rounds or (2 if args.quick else 6)
    streams, consumers = (int(x) for x in args.scale.split("x"))
    command = " ".join(["python -m bench.consumer_heal", *(sys.argv[1:] if argv is None else argv)])
    started = time.monotonic()
    sections: tuple[Callable[[], list[str]], ...] = (
        lambda: heal_tables(trials, args.storage, command),
        lambda: verify_table(streams, consumers, rounds, command),
        lambda: replay_table(rounds, command),
    )
    for section in sections:
        for row in section():
            print(row, flush=True)
    print(f"\n({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
