"""Journal-native logging: the exact fields of each entry, PRIORITY from the
level, the fixed MESSAGE_ID per event, and when the daemon chooses it.

The pure tests hand `journal.JournalHandler` a capturing sender. The last
test runs the real daemon with its stderr "connected to the journal"
(JOURNAL_STREAM = the stderr file's dev:inode) inside a private mount
namespace whose /run/systemd/journal/socket is a datagram socket of the
test's own, and decodes what systemd-python really sent (root only).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import struct
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import nats
import pytest

from kanade_watchdog.model.events import MESSAGE_IDS, Event, Trigger
from kanade_watchdog.report import journal
from kanade_watchdog.report.journal import (
    FIELD_NAMES,
    JournalHandler,
    message_id,
    stderr_is_journal,
)
from kanade_watchdog.report.logs import JsonFormatter, fields, record_fields, setup_logging
from tests.conftest import REPO
from tests.natsserver import NatsServer
from tests.sdnotify import NotifiedDaemon
from tests.test_notify import small_config

STANDARD = {"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "LOGGER", "CODE_FILE", "CODE_LINE",
            "CODE_FUNC"}  # fmt: skip
ALLOWED = STANDARD | {"MESSAGE_ID", "TRACEBACK", *FIELD_NAMES.values()}


def entries_of(sent: list[list[str]]) -> list[dict[str, str]]:
    out = []
    for entry in sent:
        pairs = [item.partition("=") for item in entry]
        keys = [k for k, _, _ in pairs]
        assert len(keys) == len(set(keys)), keys  # one value per field
        out.append({k: v for k, _, v in pairs})
    return out


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, list[list[str]]]]:
    """A logger whose only handler is a JournalHandler with a capturing sender."""
    sent: list[list[str]] = []
    logger = logging.getLogger("kanade_watchdog.test_journal")
    handler = JournalHandler(fields_of=record_fields, send=sent.append)
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger, sent
    logger.removeHandler(handler)
    logger.propagate = True


# --- one record, one entry -------------------------------------------------------------


def test_an_event_becomes_exactly_these_journal_fields(
    captured: tuple[logging.Logger, list[list[str]]],
) -> None:
    """A `created` event carries MESSAGE, PRIORITY=6, SYSLOG_IDENTIFIER, its fixed
    MESSAGE_ID and KANADE_* fields, the source location, and nothing else."""
    logger, sent = captured
    logger.info(
        "created stream %s (trigger %s)",
        "RESULTS",
        Trigger.ADVISORY,
        extra=fields(
            action=Event.CREATED,
            message_id=Event.CREATED,
            resource="RESULTS",
            stream="RESULTS",
            kind="stream",
            trigger=str(Trigger.ADVISORY),
            diff="",  # empty values are left out, never sent as "KANADE_DIFF="
        ),
    )
    [entry] = entries_of(sent)
    assert set(entry) == STANDARD | {
        "MESSAGE_ID",
        "KANADE_ACTION",
        "KANADE_RESOURCE",
        "KANADE_STREAM",
        "KANADE_KIND",
        "KANADE_TRIGGER",
    }
    assert entry["MESSAGE"] == "created stream RESULTS (trigger advisory)"
    assert entry["PRIORITY"] == "6"
    assert entry["SYSLOG_IDENTIFIER"] == "kanade-watchdog"
    assert entry["MESSAGE_ID"] == "2494662d55f9457b90cc4b68b085a3ca"
    assert entry["KANADE_ACTION"] == "created"
    assert entry["KANADE_RESOURCE"] == "RESULTS"
    assert entry["KANADE_KIND"] == "stream"
    assert entry["KANADE_TRIGGER"] == "advisory"
    assert entry["LOGGER"] == "kanade_watchdog.test_journal"
    assert entry["CODE_FILE"] == __file__
    assert entry["CODE_FUNC"] == "test_an_event_becomes_exactly_these_journal_fields"


def test_update_and_failure_fields_carry_the_diff_and_the_error(
    captured: tuple[logging.Logger, list[list[str]]],
) -> None:
    """KANADE_DIFF holds the drift, KANADE_ERROR the broker's error text, and a
    line without an event gets no MESSAGE_ID at all."""
    logger, sent = captured
    logger.info(
        "updated", extra=fields(action=Event.UPDATED, message_id=Event.UPDATED, diff="a: 1 -> 2")
    )
    logger.warning(
        "failed", extra=fields(action=Event.FAILED, message_id=Event.FAILED, error="boom 10047")
    )
    logger.warning("data discarded", extra=fields(action=Event.UPDATED))
    logger.debug("plain")
    updated, failed, stake, plain = entries_of(sent)
    assert updated["KANADE_DIFF"] == "a: 1 -> 2"
    assert updated["MESSAGE_ID"] == MESSAGE_IDS[Event.UPDATED]
    assert failed["KANADE_ERROR"] == "boom 10047"
    assert failed["PRIORITY"] == "4"
    assert "MESSAGE_ID" not in stake
    assert stake["KANADE_ACTION"] == "updated"
    assert set(plain) == STANDARD
    assert plain["PRIORITY"] == "7"


@pytest.mark.parametrize(
    ("level", "priority"),
    [
        (logging.DEBUG, 7),
        (logging.INFO, 6),
        (logging.WARNING, 4),
        (logging.ERROR, 3),
        (logging.CRITICAL, 2),
    ],
)
def test_priority_follows_the_level(
    captured: tuple[logging.Logger, list[list[str]]], level: int, priority: int
) -> None:
    """PRIORITY= is the syslog priority of the logging level."""
    logger, sent = captured
    logger.log(level, "x")
    assert entries_of(sent)[0]["PRIORITY"] == str(priority)


def test_a_traceback_stays_out_of_message(
    captured: tuple[logging.Logger, list[list[str]]],
) -> None:
    """An exception's traceback goes to TRACEBACK=, so MESSAGE stays one line."""
    logger, sent = captured

    def fail() -> None:
        raise ValueError("deep")

    try:
        fail()
    except ValueError:
        logger.exception("reload refused: %s", "bad key")
    [entry] = entries_of(sent)
    assert entry["MESSAGE"] == "reload refused: bad key"
    assert entry["PRIORITY"] == "3"
    assert "ValueError: deep" in entry["TRACEBACK"]


def test_json_lines_carry_a_traceback_as_a_field_and_stay_one_line() -> None:
    """--log-format json: a record with an exception keeps its message and gets
    the traceback as the "traceback" key, still one line of JSON."""

    def fail() -> None:
        raise TypeError("bad argument")

    try:
        fail()
    except TypeError as exc:
        record = logging.LogRecord(
            "kanade_watchdog", logging.ERROR, __file__, 1, "task %s failed", ("worker",),
            (type(exc), exc, exc.__traceback__),
        )  # fmt: skip
    line = JsonFormatter().format(record)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["message"] == "task worker failed"
    assert doc["traceback"].startswith("Traceback (most recent call last)")
    assert doc["traceback"].endswith("TypeError: bad argument")


def test_every_event_has_its_own_fixed_128_bit_message_id() -> None:
    """Each event type maps to a distinct 32-hex-digit ID; unknown values get none."""
    assert set(MESSAGE_IDS) == set(Event)
    ids = list(MESSAGE_IDS.values())
    assert len(set(ids)) == len(ids)
    for event, mid in MESSAGE_IDS.items():
        assert message_id(event) == mid
        assert message_id(str(event)) == mid
        assert len(mid) == 32
        int(mid, 16)
    assert message_id("not-an-event") is None
    assert message_id(None) is None


# --- choosing the output ----------------------------------------------------------------


def test_stderr_is_the_journal_only_when_journal_stream_names_fd_2(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """JOURNAL_STREAM must equal fd 2's dev:inode; a stale value (stderr redirected
    by a wrapper) or none means plain lines."""
    st = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert stderr_is_journal()
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
    assert not stderr_is_journal()
    monkeypatch.delenv("JOURNAL_STREAM")
    assert not stderr_is_journal()


@pytest.fixture
def journald(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A listening datagram socket standing in for journald's (only its
    presence is checked here: nothing is sent to it)."""
    directory = Path(tempfile.mkdtemp(prefix="kwd-journald-"))
    path = directory / "socket"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    monkeypatch.setattr(journal, "SOCKET", str(path))
    yield path
    sock.close()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def restored_logging() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield root
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_setup_logging_picks_journal_text_or_json(
    monkeypatch: pytest.MonkeyPatch, journald: Path, restored_logging: logging.Logger
) -> None:
    """auto = the journal handler when stderr is the journal, else text lines;
    json lines carry the same MESSAGE_ID as the journal would."""
    root = restored_logging
    st = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    setup_logging("auto", "info")
    assert [type(h) for h in root.handlers] == [JournalHandler]
    monkeypatch.delenv("JOURNAL_STREAM")
    setup_logging("auto", "info")
    assert [type(h) for h in root.handlers] == [logging.StreamHandler]
    setup_logging("journal", "info")
    assert [type(h) for h in root.handlers] == [JournalHandler]
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "created %s", ("A",), None)
    record.kanade = fields(action=Event.CREATED, message_id=Event.CREATED, resource="A")["kanade"]
    doc = json.loads(JsonFormatter().format(record))
    assert doc["message"] == "created A"
    assert doc["message_id"] == MESSAGE_IDS[Event.CREATED]
    assert doc["action"] == "created"


def test_journal_without_its_socket_falls_back_to_text_saying_so_once(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    restored_logging: logging.Logger,
) -> None:
    """`--log-format journal` where journald's socket is missing (sd_journal_sendv
    would drop every entry silently) prints one line on stderr naming the
    socket and logs text lines instead; `auto` falls back without a word."""
    root = restored_logging
    missing = tmp_path / "no-journal" / "socket"
    monkeypatch.setattr(journal, "SOCKET", str(missing))
    setup_logging("journal", "info")
    assert [type(h) for h in root.handlers] == [logging.StreamHandler]
    logging.getLogger("kanade_watchdog.test").info("still %s", "heard")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == (
        f"kanade-watchdog: --log-format journal: no journal socket at {missing}; "
        "logging text lines to stderr instead"
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO    still heard", lines[1])
    assert len(lines) == 2

    st = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    setup_logging("auto", "info")
    assert [type(h) for h in root.handlers] == [logging.StreamHandler]
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(
    os.path.exists(journal.SOCKET), reason="this machine has a journal: nothing falls back"
)
async def test_daemon_asked_for_the_journal_without_one_logs_text(
    tmp_path: Path, server: NatsServer
) -> None:
    """`run --log-format journal` on a machine without journald: the first
    stderr line says the journal cannot be reached, then the daemon's own
    lines follow as text (ready included), not into the void."""
    config = small_config(tmp_path / "watchdog.toml", server.url)
    workdir = tmp_path / "d"
    workdir.mkdir()
    daemon = NotifiedDaemon(config, workdir, log_format="journal").start()
    try:
        await daemon.until("ready", lambda: "ready: 3/3 in sync" in daemon.stderr())
        lines = daemon.stderr().splitlines()
        assert lines[0].startswith("kanade-watchdog: --log-format journal: no journal socket")
        started = [line for line in lines if " INFO    starting: " in line]
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO    starting: ", started[0])
        assert sum("--log-format journal" in line for line in lines) == 1
    finally:
        daemon.stop()


# --- the real daemon, the real systemd-python, a socket of our own -------------------------


def decode_native(data: bytes) -> dict[str, str]:
    """journald's native protocol: KEY=value lines, or KEY\\n<u64 le size><bytes>\\n."""
    out: dict[str, str] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            i = nl + 1
        else:
            key = line
            (size,) = struct.unpack("<Q", data[nl + 1 : nl + 9])
            value = data[nl + 9 : nl + 9 + size]
            i = nl + 9 + size + 1
        out[key.decode()] = value.decode()
    return out


needs_mount_ns = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not journal.available(),
    reason="needs root and unshare(1) to give the daemon a private /run/systemd/journal",
)


@pytest.fixture
def journal_socket() -> Iterator[tuple[Path, Callable[[], list[dict[str, str]]]]]:
    """A datagram socket standing in for journald; returns (dir, read-all)."""
    directory = Path(tempfile.mkdtemp(prefix="kwd-journal-"))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(directory / "socket"))
    sock.setblocking(False)
    got: list[dict[str, str]] = []

    def read() -> list[dict[str, str]]:
        while True:
            try:
                got.append(decode_native(sock.recv(1 << 20)))
            except BlockingIOError:
                return got

    yield directory, read
    sock.close()
    shutil.rmtree(directory, ignore_errors=True)


@needs_mount_ns
async def test_daemon_under_the_journal_emits_native_entries(
    tmp_path: Path,
    journal_socket: tuple[Path, Callable[[], list[dict[str, str]]]],
) -> None:
    """With stderr connected to the journal, the daemon writes native entries
    (nothing on stderr): created, updated (with KANADE_DIFF) and failed (with
    KANADE_ERROR) events carry their KANADE_* fields and fixed MESSAGE_ID."""
    directory, read = journal_socket
    srv = NatsServer(tmp_path, jetstream_conf="max_file_store: 64MB").start()
    daemon: NotifiedDaemon | None = None
    try:
        big = '[streams.BIG]\nsubjects = ["big.>"]\nmax_bytes = "1GiB"\n'
        config = small_config(tmp_path / "watchdog.toml", srv.url, resources=big)
        workdir = tmp_path / "d"
        workdir.mkdir()
        stderr = workdir / "daemon.stderr"
        stderr.touch()
        st = stderr.stat()
        script = (
            "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && "
            'mount --bind "$0" /run/systemd/journal && exec "$@"'
        )
        daemon = NotifiedDaemon(
            config,
            workdir,
            log_format="auto",
            env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
            wrapper=[
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                script,
                str(directory),
            ],
        ).start()

        def with_action(action: str) -> list[dict[str, str]]:
            return [e for e in read() if e.get("KANADE_ACTION") == action]

        await daemon.until("3 created entries", lambda: len(with_action("created")) >= 3)
        await daemon.until("a failed entry", lambda: with_action("failed"))
        nc = await nats.connect(srv.url)
        try:
            info = json.loads((await nc.request("$JS.API.STREAM.INFO.ORDERS", b"")).data)
            cfg = {**info["config"], "max_bytes": 2 * 1024 * 1024}
            await nc.request("$JS.API.STREAM.UPDATE.ORDERS", json.dumps(cfg).encode())
        finally:
            await nc.close()
        await daemon.until("an updated entry", lambda: with_action("updated"))

        entries = read()
        for e in entries:
            assert set(e) <= ALLOWED, set(e) - ALLOWED
            assert e["SYSLOG_IDENTIFIER"] == "kanade-watchdog"
            assert e["CODE_FILE"].endswith(".py")
        created = with_action("created")
        assert {e["KANADE_STREAM"] for e in created} == {"ORDERS", "KV_settings", "OBJ_blobs"}
        assert {(e["KANADE_RESOURCE"], e["KANADE_KIND"]) for e in created} == {
            ("ORDERS", "stream"),
            ("settings", "kv"),
            ("blobs", "object_store"),
        }
        for e in created:
            assert e["MESSAGE_ID"] == MESSAGE_IDS[Event.CREATED]
            assert e["KANADE_TRIGGER"] == "startup"
            assert e["PRIORITY"] == "6"
        [updated] = with_action("updated")
        assert updated["MESSAGE_ID"] == MESSAGE_IDS[Event.UPDATED]
        assert updated["KANADE_TRIGGER"] == "advisory"
        assert updated["KANADE_DIFF"].startswith("max_bytes: ")
        failed = with_action("failed")[0]
        assert failed["KANADE_RESOURCE"] == "BIG"
        assert failed["MESSAGE_ID"] == MESSAGE_IDS[Event.FAILED]
        assert failed["PRIORITY"] == "4"
        assert failed["KANADE_ERROR"]
        started = [e for e in entries if e.get("MESSAGE_ID") == MESSAGE_IDS[Event.STARTED]]
        assert started, entries
        assert stderr.read_text() == ""  # everything went to the journal
    finally:
        if daemon is not None:
            daemon.stop()
        srv.stop()


def test_docs_list_every_message_id() -> None:
    """docs/SYSTEMD.md has a row for every event with its exact MESSAGE_ID, so
    the table operators paste into alerts cannot drift from the code."""
    text = (REPO / "docs" / "SYSTEMD.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| `([0-9a-f]{32})` \|", text, re.M))
    assert rows == {str(event): mid for event, mid in MESSAGE_IDS.items()}
