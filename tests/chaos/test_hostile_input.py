"""Hostile input: what other clients write to the broker, and what an
operator's config or terminal does to the watchdog.

Garbage on the advisory subjects; reloads that would drop stored messages
from protected streams; metadata that uses the marker's own keys; a foreign
max_age under a declared dedupe window; a forged spec_version marker;
control characters and forged log records in broker metadata; credentials
in a server URL; output nobody can read. Each drives the real daemon or
command line against a real broker and ends with the suite's invariants: no
delete or purge, no acknowledged message lost, the daemon alive and quiet,
no secret printed. Broken config files at the daemon's start are in
`test_broken_config`.
"""

from __future__ import annotations

import json
import random
import secrets
import time
from typing import Any

import pytest

from tests.chaos import figures
from tests.chaos.harness import Scene, delete_and_heal
from tests.chaos.hostile import (
    INJECTED,
    TEXT_RECORD,
    TextDaemon,
    forge,
    forged_lines,
    private,
    run_cli_into,
)
from tests.chaos.invariants import Invariants, no_destructive
from tests.chaos.ledger import Producer, api_ok
from tests.chaos.scale import pick, timeout
from tests.daemonproc import has_message, is_action
from tests.helpers_streams import run_cli

PREFIX = "$JS.EVENT.ADVISORY.STREAM"
TYPE = "io.nats.jetstream.advisory.v1.stream_action"
ROUNDS = pick(10, 400)
SENTINEL_EVERY = 5  # rounds between waits for the daemon to catch up


def advisory(stream: str, action: str = "delete", **extra: Any) -> bytes:
    return json.dumps({"type": TYPE, "stream": stream, "action": action, **extra}).encode()


def garbage(round_no: int) -> list[tuple[str, bytes, str]]:
    """(subject, payload, the debug reason expected or '' for silently ignored)."""
    n = round_no
    return [
        (f"{PREFIX}.DELETED.RESULTS", b"{not json", "not JSON"),
        (f"{PREFIX}.DELETED.RESULTS", b"", "not JSON"),
        (f"{PREFIX}.DELETED.EXEC", bytes(range(256)) * 4, "not JSON"),
        # Nested past the JSON parser's depth, yet under the size cap.
        (f"{PREFIX}.DELETED.EXEC", b"[" * 30_000 + b"]" * 30_000, "not JSON"),
        (f"{PREFIX}.UPDATED.RESULTS", b"null", "not a stream action"),
        (f"{PREFIX}.UPDATED.RESULTS", b"[1, 2, 3]", "not a stream action"),
        (f"{PREFIX}.CREATED.KV_jobs", b"42", "not a stream action"),
        (f"{PREFIX}.DELETED.RESULTS", json.dumps({"type": 5}).encode(), "not a stream action"),
        (f"{PREFIX}.DELETED.RESULTS", advisory("EXEC"), "not a stream action"),
        (f"{PREFIX}.DELETED.KV_jobs", advisory("KV_jobs", type="x"), "not a stream action"),
        (f"{PREFIX}.EXPLODED.RESULTS", advisory("RESULTS"), "unknown action"),
        (f"{PREFIX}.deleted.RESULTS", advisory("RESULTS"), "unknown action"),
        (f"{PREFIX}.DELETED.NOPE_{n}", advisory(f"NOPE_{n}"), ""),  # not declared
        (f"{PREFIX}.UPDATED.OBJ_nope{n}", advisory(f"OBJ_nope{n}", "modify"), ""),
        (f"{PREFIX}.UPDATED.RESULTS", b"x" * 900_000, "payload"),
        (
            f"{PREFIX}.DELETED.RESULTS",
            advisory("RESULTS", pad="y" * 100_000),  # well-formed but oversized
            "payload",
        ),
    ]


async def sentinel(scene: Scene, daemon: Any, stream: str = "AUDIT") -> None:
    """A genuine-looking UPDATED advisory, and wait until the daemon acted on
    it: nats-py hands one subscription its messages in order, so everything
    published before it has been handled."""
    mark = daemon.mark()
    await scene.nc.publish(f"{PREFIX}.UPDATED.{stream}", advisory(stream, "modify"))
    await daemon.wait_for(has_message("pass (events)"), after=mark, within=10)


@pytest.mark.timeout(timeout(60, 600))
async def test_garbage_on_the_advisory_subjects_is_ignored(scene: Scene) -> None:
    """Malformed JSON, binary, nesting deeper than the parser goes, wrong
    types, unknown actions, undeclared names and payloads up to 900 KB,
    published round after round: each malformed one is dropped with a debug
    line saying why, none causes a write or a crash, memory stays flat, and
    a real delete afterwards is still healed through its advisory."""
    figure = scene.figure
    daemon = scene.start(scene.config())
    inv = Invariants(scene, daemon)
    await scene.converge(daemon, t0=time.monotonic(), after=0, reconnect=False)
    await inv.quiet_when_in_sync()
    inv.baseline()
    audit = await scene.ledger.collect()
    before, mark = audit.mark(), daemon.mark()
    expected: dict[str, int] = {}
    for n in range(ROUNDS):
        for subject, payload, reason in garbage(n):
            await scene.nc.publish(subject, payload)
            figure.faults += 1
            if reason:
                expected[reason] = expected.get(reason, 0) + 1
        await scene.nc.flush()
        if n % SENTINEL_EVERY == SENTINEL_EVERY - 1:
            await sentinel(scene, daemon)
            inv.alive()
    await sentinel(scene, daemon)
    ignored = [
        str(line["message"])
        for line in daemon.find(has_message("ignoring advisory"), after=mark)
        if line.get("level") == "debug"
    ]
    for reason, count in expected.items():
        seen = sum(reason in text for text in ignored)
        assert seen == count, f"{reason!r}: {seen} debug lines for {count} messages"
    await audit.collect(settle=0.1)
    assert not audit.writes(after=before), [c.subject for c in audit.writes(after=before)]
    undeclared = [c for c in audit.calls[before:] if "NOPE" in c.subject or "nope" in c.subject]
    assert not undeclared, "advisories about undeclared streams caused requests"
    inv.memory_flat()
    # The subscription still works: a real delete is healed by its advisory.
    mark, deleted_at = daemon.mark(), time.time()
    await api_ok(scene.nc, "$JS.API.STREAM.DELETE.KV_jobs")
    healed = await daemon.wait_for(is_action("created", stream="KV_jobs"), after=mark, within=5)
    assert healed[0]["trigger"] == "advisory"
    figure.converged(float(healed[0]["ts"]) - deleted_at)
    figure.survived, figure.heals = figure.faults, 1
    await inv.quiet_when_in_sync()
    await inv.no_destructive()
    await inv.stops_cleanly()
    figure.hostile(
        "malformed and deeply nested JSON, binary, wrong types, unknown actions, undeclared "
        "names, 100-900 KB payloads on `$JS.EVENT.ADVISORY.STREAM.*.*`",
        "each malformed one dropped with a debug line saying why; no request about undeclared "
        "names, no write; memory flat; a real delete afterwards healed from its advisory",
    )
    figures.publish(figure)


# --- updates that would drop stored data, under protect -----------------------------------

PROTECTED = """
[streams.ORDERS]
subjects = ["orders.>"]
storage = "file"
allow_direct = true
protect = true

[streams.SPOOL]
subjects = ["spool.>"]
storage = "file"
max_bytes = "1MiB"
discard = "new"
protect = true
"""
PROTECTED_NAMES = ("ORDERS", "SPOOL")
SPOOLED = 120  # messages of 8,000 bytes: ~960 KB under SPOOL's 1 MiB cap


@pytest.mark.timeout(timeout(60, 300))
async def test_protect_holds_against_reloads_that_would_drop_stored_messages(
    scene: Scene,
) -> None:
    """Protected streams, a producer publishing to ORDERS throughout, and
    reloads that would drop stored messages: retention limits -> interest
    (spec_version 2), and SPOOL, held past a cap lowered under discard new
    (which drops nothing and is applied), switched to discard old. Both are
    reported blocked and never sent; every acknowledged message is there,
    SPOOL keeps all it held, and the daemon stays up and quiet."""
    figure = scene.figure
    config = scene.config(resources=PROTECTED)
    daemon = scene.start(config)
    inv = Invariants(scene, daemon)
    await scene.converge(daemon, t0=time.monotonic(), after=0, reconnect=False)
    producer = await Producer(scene.server.url, "orders.chaos").start()
    try:
        js = scene.nc.jetstream()
        for _ in range(SPOOLED):
            await js.publish("spool.fill", b"s" * 8000)
        await producer.wait_acks(50)
        before, mark = (await scene.ledger.collect()).mark(), daemon.mark()
        lowered = config.read_text().replace('max_bytes = "1MiB"', 'max_bytes = "256KiB"')
        assert (await scene.reload(daemon, config, lowered))["action"] == "reloaded"
        [applied] = await daemon.wait_for(is_action("updated", stream="SPOOL"), after=mark)
        assert applied["diff"] == "max_bytes: 1MiB -> 256KiB", applied
        mark = daemon.mark()
        losing = "spec_version = 2\n" + lowered.replace(
            "protect = true\n", 'protect = true\nretention = "interest"\n', 1
        ).replace('discard = "new"', 'discard = "old"')
        assert (await scene.reload(daemon, config, losing))["action"] == "reloaded"
        figure.faults += 2
        blocked = await daemon.wait_for(is_action("blocked"), after=mark, n=2)
        assert {line["stream"] for line in blocked} == {"ORDERS", "SPOOL"}, blocked
        await producer.wait_acks(50)  # publishing on, into the untouched ORDERS
        await inv.quiet_when_in_sync(skip=["ORDERS", "SPOOL"])
        inv.alive()
    finally:
        await producer.stop()
    await scene.ledger.collect()
    assert [c.stream for c in scene.ledger.writes(after=before)] == ["SPOOL"]  # the cap only
    lost = await producer.verify(scene.nc, "ORDERS")
    figure.acked, figure.lost = len(producer.acked), len(lost)
    assert not lost, lost[:10]
    orders, spool = [(await api_ok(scene.nc, f"$JS.API.STREAM.INFO.{s}")) for s in PROTECTED_NAMES]
    assert orders["config"]["retention"] == "limits"
    assert (spool["config"]["discard"], spool["state"]["messages"]) == ("new", SPOOLED)
    figure.survived = figure.faults
    await inv.no_destructive()
    await inv.stops_cleanly()
    figure.hostile(
        "reloads of protected streams holding data: retention limits -> interest (spec_version "
        "2); discard new -> old on a stream held past a lowered cap",
        "both blocked, never sent (the cap lowering, which drops nothing, applied); every "
        "acknowledged message kept, the capped stream keeps all it held",
    )
    figures.publish(figure)


# --- declarations and foreign limits that would make writes loop ---------------------------

MARKER_KEYS = ("kanade.spec_version", "kanade.managed_by", "kanade.spec_hash")
HOUR_NS = 3600 * 10**9
MINUTE_NS = 60 * 10**9
INT32_MAX = 2**31 - 1
DEDUPE = """
[streams.DEDUPE]
subjects = ["dedupe.>"]
duplicate_window = "2h"

[streams.PLAIN]
subjects = ["plain.>"]
"""


@pytest.mark.timeout(timeout(60, 300))
async def test_marker_keys_in_declared_metadata_are_refused_at_start_and_on_reload(
    scene: Scene,
) -> None:
    """Metadata declaring the watchdog's own marker keys (the marker would
    overwrite them on every write, forever) is refused: `run` exits 78 with
    one line naming the key, and a SIGHUP to a running daemon is refused
    with the running config kept: no write follows, and it still heals."""
    figure, rng = scene.figure, random.Random(13)
    config = scene.config(resources=DEDUPE)
    good = config.read_text()
    daemon = scene.start(config)
    inv = Invariants(scene, daemon)
    await scene.converge(daemon, t0=time.monotonic(), after=0, reconnect=False)
    await inv.quiet_when_in_sync()
    before = (await scene.ledger.collect()).mark()
    for key in MARKER_KEYS:
        bad = good.replace(
            'subjects = ["plain.>"]\n', f'subjects = ["plain.>"]\nmetadata = {{ "{key}" = "7" }}\n'
        )
        started = await run_cli("run", config=private(scene.tmp / "fresh.toml", bad))
        assert started.code == 78, started.stderr
        [line] = started.stderr.strip().splitlines()
        assert f"config error: {scene.tmp / 'fresh.toml'}: " in line, line
        assert key in line, line
        refused = await scene.reload(daemon, config, bad)
        figure.faults += 2
        assert refused["action"] == "reload_failed", refused
        assert key in refused["message"], refused
        assert "reserved for the watchdog's own marker" in refused["message"], refused
        await delete_and_heal(scene, daemon, rng)
    await inv.quiet_when_in_sync(passes=2)
    await scene.ledger.collect()
    # The only writes: one re-create per heal, none to the stream with the bad keys.
    assert {c.verb for c in scene.ledger.writes(after=before)} == {"STREAM.CREATE"}
    figure.survived = figure.faults
    await inv.no_destructive()
    await inv.stops_cleanly()
    figure.hostile(
        "`kanade.spec_version`, `kanade.managed_by`, `kanade.spec_hash` declared in metadata, at "
        "start and by SIGHUP",
        "`run` exits 78 with one line naming the key; the reload refused, the running config "
        "kept; no write, deletes still healed",
    )
    figures.publish(figure)


@pytest.mark.timeout(timeout(60, 300))
async def test_a_foreign_max_age_under_the_declared_dedupe_window_is_written_once(
    scene: Scene,
) -> None:
    """duplicate_window = "2h" declared with no max_age, and another client
    sets max_age 1h (and the window 2m, since the broker holds the window
    under max_age): the daemon writes DEDUPE once, the window as far as
    max_age lets it (2m -> 1h), and then finds it in sync pass after pass,
    never reports it as not converging, and never writes it again."""
    figure = scene.figure
    daemon = scene.start(scene.config(resources=DEDUPE))
    inv = Invariants(scene, daemon)
    await scene.converge(daemon, t0=time.monotonic(), after=0, reconnect=False)
    await inv.quiet_when_in_sync()
    before, mark = (await scene.ledger.collect()).mark(), daemon.mark()
    await forge(scene.nc, "DEDUPE", max_age=HOUR_NS, duplicate_window=2 * MINUTE_NS)
    figure.faults += 1
    [updated] = await daemon.wait_for(is_action("updated", stream="DEDUPE"), after=mark)
    assert updated["diff"] == "duplicate_window: 2m -> 1h", updated
    figure.heals += 1
    await inv.quiet_when_in_sync(passes=3)
    await scene.ledger.collect()
    assert len(scene.ledger.writes(after=before, stream="DEDUPE")) == 1
    assert not daemon.find(lambda line: line.get("level") == "error", after=mark)
    info = await api_ok(scene.nc, "$JS.API.STREAM.INFO.DEDUPE")
    assert (info["config"]["max_age"], info["config"]["duplicate_window"]) == (HOUR_NS, HOUR_NS)
    figure.survived = figure.faults
    await inv.no_destructive()
    await inv.stops_cleanly()
    figure.hostile(
        "another client sets max_age 1h (window 2m) under a declared "
        '`duplicate_window = "2h"` with no max_age',
        "one update (duplicate_window 2m -> 1h), then in sync pass after pass; never reported as "
        "not converging",
    )
    figures.publish(figure)


MARKED = """
[streams.RESULTS]
subjects = ["results.>"]
storage = "file"
max_age = "30d"
allow_direct = true
metadata = { owner = "ops" }

[streams.PLAIN]
subjects = ["plain.>"]
"""


# --- a forged marker, and control characters read from the broker -------------------------


@pytest.mark.timeout(timeout(60, 300))
async def test_a_forged_spec_version_marker_is_not_obeyed(scene: Scene) -> None:
    """Another client stamps kanade.spec_version = 2^31-1 on RESULTS, which
    holds messages, together with max_age 1h: the daemon is not shut out, it
    puts max_age back (and its own marker) at once and no message is lost;
    the forged marker stamped alone changes nothing to write, and `check`
    warns that it was not obeyed."""
    figure = scene.figure
    config = scene.config(resources=MARKED)
    daemon = scene.start(config)
    inv = Invariants(scene, daemon)
    await scene.converge(daemon, t0=time.monotonic(), after=0, reconnect=False)
    producer = await Producer(scene.server.url, "results.chaos").start()
    try:
        await producer.wait_acks(50)
        mark = daemon.mark()
        forged = {"kanade.spec_version": str(INT32_MAX)}
        await forge(scene.nc, "RESULTS", metadata=forged, max_age=HOUR_NS)
        figure.faults += 1
        [updated] = await daemon.wait_for(is_action("updated", stream="RESULTS"), after=mark)
        assert updated["trigger"] == "advisory", updated
        assert "max_age: 1h -> 30d" in updated["diff"], updated
        figure.heals += 1
        info = await api_ok(scene.nc, "$JS.API.STREAM.INFO.RESULTS")
        assert info["config"]["max_age"] == 30 * 24 * HOUR_NS
        assert info["config"]["metadata"]["kanade.spec_version"] == "1"
        await producer.wait_acks(20)
        # The marker alone: nothing declared differs, so nothing is written.
        await forge(scene.nc, "RESULTS", metadata=forged)
        figure.faults += 1
        await inv.quiet_when_in_sync(passes=2)
        checked = await run_cli("check", config=config)
        assert checked.code == 1, checked.stdout
        assert "suspicious marker not obeyed: RESULTS" in checked.stdout
    finally:
        await producer.stop()
    lost = await producer.verify(scene.nc, "RESULTS")
    figure.acked, figure.lost = len(producer.acked), len(lost)
    assert not lost, lost[:10]
    figure.survived = figure.faults
    await inv.no_destructive()
    await inv.stops_cleanly()
    figure.hostile(
        "another client stamps `kanade.spec_version = 2147483647` with max_age 1h on a stream "
        "holding messages, then the marker alone",
        "not obeyed: max_age put back at once and the marker restamped, no message lost; the "
        "marker alone causes no write, `check` warns `suspicious marker not obeyed`",
    )
    figures.publish(figure)


@pytest.mark.timeout(timeout(60, 300))
async def test_control_characters_in_broker_metadata_forge_no_output_line(
    scene: Scene,
) -> None:
    """Metadata written by another client carries newlines, a whole forged
    log record, terminal escapes and NULs, in a declared key's value and in
    a key of its own: `plan` shows the drift and the daemon's text log shows
    the update that puts it back, each on lines of their own making, with
    every character read from the broker escaped."""
    figure = scene.figure
    config = scene.config(resources=MARKED)
    assert (await run_cli("apply", config=config)).code == 0
    await forge(scene.nc, "RESULTS", metadata=INJECTED)
    figure.faults += 1
    planned = await run_cli("plan", config=config)
    assert planned.code == 2, planned.stdout
    lines = planned.stdout.splitlines()
    assert forged_lines(lines) == [], lines
    assert "\\n2026-11-27 12:00:00 INFO" in planned.stdout  # shown, escaped
    daemon = await TextDaemon(config).start()
    try:
        await daemon.wait_for(lambda line: "updated stream RESULTS" in line)
        figure.heals += 1
        assert await daemon.stop() == 0, daemon.lines[-20:]
    finally:
        daemon.kill()
    assert daemon.lines, "the daemon logged nothing"
    assert [line for line in daemon.lines if not TEXT_RECORD.match(line)] == [], daemon.lines
    assert forged_lines(daemon.lines) == [], daemon.lines
    info = await api_ok(scene.nc, "$JS.API.STREAM.INFO.RESULTS")
    assert info["config"]["metadata"]["owner"] == "ops"
    figure.survived = figure.faults
    await no_destructive(scene)
    figure.hostile(
        "broker metadata with newlines, a whole forged log record, terminal escapes, NUL, "
        "U+2028, in a declared value and in a key",
        "`plan` and the daemon's text log escape it all: no forged line, no raw control "
        "character; the value put back",
    )
    figures.publish(figure)


# --- secrets in server URLs, output nobody reads ---------------------------------------------


@pytest.mark.timeout(timeout(60, 300))
async def test_a_reload_to_a_server_url_with_credentials_is_refused_unprinted(
    scene: Scene,
) -> None:
    """A reload whose server URL carries a password holding '/' (which ends
    a URL's authority early, so the rest would pass for a path) is refused
    with the running config kept, and so is every command given that file;
    the daemon goes on healing, and no output holds any part of the password."""
    figure, rng = scene.figure, random.Random(14)
    password = f"Adm/in{secrets.token_hex(12)}"
    config = scene.config(resources=DEDUPE)
    daemon = scene.start(config)
    inv = Invariants(scene, daemon)
    await scene.converge(daemon, t0=time.monotonic(), after=0, reconnect=False)
    url = f"nats://admin:{password}@127.0.0.1:{scene.server.port}"
    bad = config.read_text().replace(json.dumps(scene.server.url), json.dumps(url))
    assert url in bad
    refused = await scene.reload(daemon, config, bad)
    figure.faults += 1
    assert refused["action"] == "reload_failed", refused
    assert "credentials in a server URL are not allowed" in refused["message"]
    await delete_and_heal(scene, daemon, rng)
    runs = [await run_cli(command, config=config) for command in ("plan", "apply", "check")]
    figure.faults += len(runs)
    assert [r.code for r in runs] == [78, 78, 3], [r.stdout + r.stderr for r in runs]
    await inv.quiet_when_in_sync()
    await inv.stops_cleanly()
    seen = json.dumps(daemon.lines) + "\n".join(daemon.raw)
    seen += "".join(r.stdout + r.stderr for r in runs)
    for part in (password, password[:10], password[10:], password.split("/")[1]):
        assert part not in seen, "a part of the password was printed"
    figure.survived = figure.faults
    await inv.no_destructive()
    figure.hostile(
        "SIGHUP to a config whose server URL carries a password holding `/`; plan, apply and "
        "check on that file",
        "reload refused, the running config kept, deletes healed; the commands exit 78 (`check` "
        "3); no part of the password in any output",
    )
    figures.publish(figure)


@pytest.mark.timeout(timeout(60, 300))
async def test_output_nobody_can_read_ends_commands_quietly_with_their_work_done(
    scene: Scene,
) -> None:
    """`plan`, `check` and `apply` writing into a pipe whose reader is gone
    end with 141 (as if killed by SIGPIPE) and print nothing; `apply` into
    /dev/full ends with 74 and one line saying so. Neither is an internal
    error, and the apply that could not print its result still did its work:
    the broker holds every declared resource, and nothing was deleted."""
    figure = scene.figure
    config = scene.config()
    closed = [
        await run_cli_into(command, config=config, stdout="closed-pipe")
        for command in ("plan", "check")
    ]
    assert [(r.code, r.stderr) for r in closed] == [(141, ""), (141, "")], closed
    full = await run_cli_into("apply", config=config, stdout="/dev/full")
    assert full.code == 74, full
    assert full.stderr.splitlines() == ["cannot write output: No space left on device"], full
    applied = await run_cli_into("apply", config=config, stdout="closed-pipe")
    figure.faults += 4
    assert (applied.code, applied.stderr) == (141, ""), applied  # in sync by now: one line
    assert await scene.out_of_sync() == []
    figure.survived = figure.faults
    await no_destructive(scene)
    figure.hostile(
        "plan and check into a pipe whose reader is gone, apply into `/dev/full` and into the "
        "closed pipe",
        "exit 141 with nothing printed, 74 with one line; the apply's work done anyway; never an "
        "internal error",
    )
    figures.publish(figure)
