"""The developer and operator commands do what the README says: `make run`
(scripts/run-local) with a busy port and Ctrl-C, the Debian package list.

`make run` is run for real: the script, a real nats-server, the daemon, and
for Ctrl-C a real make on a pseudo-terminal, signalled the way a terminal
signals its foreground process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from tests.conftest import REPO
from tests.e2e.machine import session_dir, sweep_sessions
from tests.natsserver import NatsServer

RUN_LOCAL = REPO / "scripts" / "run-local"
PORTCHECK = REPO / "scripts" / "portcheck.py"
READY = re.compile(r"INFO\s+ready: ")
BROKER_LINE = re.compile(r"nats-server pid (\d+) on nats://127\.0\.0\.1:(\d+) ")
VENV = Path(sys.prefix)  # the venv running the tests, as `make` would use .venv


def _env(run_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KANADE_")}
    env.update(
        KANADE_VENV=str(VENV),
        KANADE_RUN_DIR=str(run_dir),
        KANADE_LOCAL_PORT=str(port),
    )
    return env


def _read_until(fd: int, pattern: re.Pattern[str], out: list[str], within: float) -> bool:
    """Append what `fd` yields to `out` until `pattern` shows up (True), the
    other side closes (False) or `within` seconds pass (False)."""
    deadline = time.monotonic() + within
    if pattern.search("".join(out)):
        return True
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # a pty's master reads EIO once the slave side is gone
            return False
        if not chunk:
            return False
        out.append(chunk.decode(errors="replace"))
        if pattern.search("".join(out)):
            return True
    return False


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return True
        time.sleep(0.05)
    return False


def _kill_session(sid: int) -> None:
    """SIGKILL every process left in session `sid` (a failed test's leftovers;
    with job control they sit in several process groups)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(stat.parent.name), signal.SIGKILL)


@contextlib.contextmanager
def _listener() -> Iterator[socket.socket]:
    """A plain socket listening on a free loopback port: 'whatever holds the
    port'. Non-blocking, so accept() tells whether anyone connected."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def _connections(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


async def _stream_names(url: str) -> set[str]:
    nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0)
    try:
        return {s.config.name for s in await nc.jetstream().streams_info() if s.config.name}
    finally:
        await nc.close()


def _run_local(run_dir: Path, port: int) -> subprocess.Popen[bytes]:
    # A session of its own and no terminal: Ctrl-C is then a SIGINT to the
    # whole process group, as a supervisor or a terminal without job control sends.
    return subprocess.Popen(
        [str(RUN_LOCAL)],
        cwd=REPO,
        env=_env(run_dir, port),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def test_run_local_never_touches_what_already_holds_its_port(tmp_path: Path) -> None:
    """With the port held by something else, run-local says so in one line,
    starts its own broker on a free port, points the daemon at it, and the
    holder never sees a connection; Ctrl-C then stops both, exit 0."""
    with _listener() as holder:
        held = holder.getsockname()[1]
        proc = _run_local(tmp_path / "run", held)
        assert proc.stdout is not None
        out: list[str] = []
        try:
            ready = _read_until(proc.stdout.fileno(), READY, out, within=60)
            text = "".join(out)
            assert ready, text
            assert _connections(holder) == 0, text
            notes = [line for line in text.splitlines() if f"port {held}" in line]
            assert len(notes) == 1, text
            match = BROKER_LINE.search(text)
            assert match is not None, text
            broker_pid, port = int(match[1]), int(match[2])
            assert port != held
            assert f"nats://127.0.0.1:{port}" in (tmp_path / "run" / "config.toml").read_text()
            # The broker the daemon filled is the one run-local started.
            assert "RESULTS" in asyncio.run(_stream_names(f"nats://127.0.0.1:{port}"))
            listens = subprocess.run(
                [sys.executable, str(PORTCHECK), "wait", str(broker_pid), str(port), "1"],
                check=False,
            )
            assert listens.returncode == 0
            os.killpg(proc.pid, signal.SIGINT)
            assert proc.wait(timeout=60) == 0, "".join(out) + proc.stdout.read().decode()
            assert _gone(broker_pid)
            assert _connections(holder) == 0
        finally:
            _kill_session(proc.pid)
            proc.wait()
            proc.stdout.close()


def test_run_local_stops_with_one_line_when_its_broker_cannot_start(tmp_path: Path) -> None:
    """A broker that exits at start (here: its store path is a file) ends
    run-local with exit 1 and one line naming the broker's reason; the
    daemon is never started."""
    run_dir = tmp_path / "run"
    (run_dir / "jetstream").mkdir(parents=True)
    (run_dir / "jetstream" / "jetstream").write_text("not a directory")
    with _listener() as probe:
        port = probe.getsockname()[1]
    proc = subprocess.run(
        [str(RUN_LOCAL)],
        cwd=REPO,
        env=_env(run_dir, port),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"did not start on 127.0.0.1:{port}" in lines[0]
    assert "storage directory is not a directory" in lines[0]
    assert not (run_dir / "config.toml").exists()


def test_portcheck_picks_a_free_port_when_the_wanted_one_is_held() -> None:
    """`pick` keeps a free port and replaces a held one, without connecting."""
    with _listener() as holder:
        held = holder.getsockname()[1]
        picked = subprocess.run(
            [sys.executable, str(PORTCHECK), "pick", str(held)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert picked.isdigit()
        assert int(picked) != held
        assert _connections(holder) == 0
    again = subprocess.run(
        [sys.executable, str(PORTCHECK), "pick", picked],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert again == picked


def _portcheck_wait(pid: int, port: int, seconds: float) -> int:
    args = [sys.executable, str(PORTCHECK), "wait", str(pid), str(port), str(seconds)]
    return subprocess.run(args, check=False).returncode


def test_portcheck_wait_tells_our_broker_from_another_listener(tmp_path: Path) -> None:
    """`wait PID PORT` succeeds only for the process that listens on PORT:
    a broker listening elsewhere, or a port held by another process, is not
    taken for it; an exited process ends the wait at once."""
    srv = NatsServer(tmp_path).start()
    try:
        assert srv.proc is not None
        pid = srv.proc.pid
        assert _portcheck_wait(pid, srv.port, 5) == 0
        with _listener() as other:
            assert _portcheck_wait(pid, other.getsockname()[1], 0.3) == 2
            assert _connections(other) == 0
    finally:
        srv.stop()
    exited = subprocess.Popen(["true"])
    exited.wait()
    assert _portcheck_wait(exited.pid, srv.port, 5) == 1


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_run_exits_0_after_ctrl_c_in_a_terminal(tmp_path: Path) -> None:
    """`make run` on a terminal, Ctrl-C typed on it: the daemon and the broker
    stop and make exits 0 (make re-raises a SIGINT it receives itself: 130)."""
    master, slave = os.openpty()
    with _listener() as probe:
        port = probe.getsockname()[1]
    # setsid --ctty: a new session whose controlling terminal is the pty, as a
    # login shell has; make runs in its foreground process group.
    proc = subprocess.Popen(
        [
            "setsid",
            "--ctty",
            "make",
            "-s",
            "-o",
            str(VENV / ".installed"),  # the venv is set up: no pip, no apt here
            "run",
            f"VENV={VENV}",
        ],
        cwd=REPO,
        env=_env(tmp_path / "run", port),
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    out: list[str] = []
    try:
        assert _read_until(master, READY, out, within=60), "".join(out)
        match = BROKER_LINE.search("".join(out))
        assert match is not None, "".join(out)
        os.write(master, b"\x03")  # the terminal's line discipline sends SIGINT
        _read_until(master, re.compile(r"\Z\A"), out, within=60)  # until make closes the pty
        assert proc.wait(timeout=30) == 0, "".join(out)
        assert "stopping" in "".join(out)
        assert _gone(int(match[1]))
    finally:
        _kill_session(proc.pid)
        proc.wait()
        os.close(master)


def _makefile_debs() -> list[str]:
    """The DEBS list the Makefile installs, continuation lines included."""
    text = (REPO / "Makefile").read_text().replace("\\\n", " ")
    match = re.search(r"^DEBS\s*:?=(.*)$", text, re.M)
    assert match is not None, "no DEBS in the Makefile"
    return match[1].split()


def _readme_debs() -> list[str]:
    text = (REPO / "README.md").read_text()
    found: list[str] = re.findall(r"Debian packages\s+`([^`]+)`", text)
    assert len(found) == 1, found
    return found[0].split()


def test_readme_lists_the_debian_packages_make_installs() -> None:
    """The README names exactly the Debian packages `make` installs, no more,
    no fewer (it once listed 6 of 9)."""
    makefile, readme = _makefile_debs(), _readme_debs()
    assert len(makefile) == len(set(makefile))
    assert sorted(readme) == sorted(makefile)


def _watch_it_heal() -> tuple[list[str], list[str]]:
    """The README's "Watch it heal" snippets (Python fed to .venv/bin/python)
    and the daemon lines it says they produce, without their timestamps."""
    text = (REPO / "README.md").read_text()
    section = text.split("### Watch it heal", 1)[1].split("\n## ", 1)[0]
    heredoc = r"```sh\n\.venv/bin/python - <<'EOF'\n(.*?)\nEOF\n```"
    snippets: list[str] = re.findall(heredoc, section, re.S)
    shown: list[str] = re.findall(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO\s+.*)$", section, re.M)
    shown += [f"INFO    {line}" for line in re.findall(r"it logs `([^`]+)`", section)]
    return snippets, shown


def test_readme_watch_it_heal_does_what_it_says(tmp_path: Path) -> None:
    """Each "Watch it heal" snippet, run against `make run`'s broker, makes the
    daemon log exactly the lines the README shows (no tool the setup does
    not install)."""
    snippets, shown = _watch_it_heal()
    assert len(snippets) == 2
    assert len(shown) == 3
    with _listener() as probe:
        port = probe.getsockname()[1]
    proc = _run_local(tmp_path / "run", port)
    assert proc.stdout is not None
    out: list[str] = []
    try:
        assert _read_until(proc.stdout.fileno(), READY, out, within=60), "".join(out)
        for snippet in snippets:
            code = snippet.replace("nats://127.0.0.1:4222", f"nats://127.0.0.1:{port}")
            subprocess.run([sys.executable, "-"], input=code, text=True, check=True, timeout=30)
        for line in shown:
            pattern = re.compile(re.escape(" ".join(line.split())).replace(r"\ ", r"\s+"))
            assert _read_until(proc.stdout.fileno(), pattern, out, within=10), (line, "".join(out))
    finally:
        _kill_session(proc.pid)
        proc.wait()
        proc.stdout.close()


def test_e2e_runtime_dir_is_removed_when_the_session_ends(tmp_path: Path) -> None:
    """The end-to-end runtime (a venv of about 86 MB) lives in a directory of
    the session's own, readable by the service's dynamic user, and nothing
    of it is left once the session is over."""
    with session_dir(tmp_path) as base:
        assert base.parent == tmp_path
        assert base.stat().st_mode & 0o777 == 0o755
        (base / "venv" / "bin").mkdir(parents=True)
        (base / "venv" / "bin" / "python").write_text("")
    assert list(tmp_path.iterdir()) == []


def test_e2e_runtime_of_a_killed_session_is_removed_by_the_next(tmp_path: Path) -> None:
    """A session killed with SIGKILL cannot clean up; the next session removes
    its directory, and never the directory of a session still running."""
    code = (
        "import sys, time; from pathlib import Path; "
        "from tests.e2e.machine import session_dir\n"
        "with session_dir(Path(sys.argv[1])) as base:\n"
        "    (base / 'venv').mkdir(); print(base, flush=True); time.sleep(60)\n"
    )
    killed = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert killed.stdout is not None
    left = Path(killed.stdout.readline().strip())
    killed.kill()
    killed.wait()
    killed.stdout.close()
    assert (left / "venv").is_dir()
    with session_dir(tmp_path) as running:
        assert not left.exists()
        assert sweep_sessions(tmp_path) == []
        assert running.is_dir()
    assert list(tmp_path.iterdir()) == []
