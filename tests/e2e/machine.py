"""A real systemd in a throwaway container, and what the daemon needs to run in it.

`Runtime` is a venv made from the system's /usr/bin/python3 holding the repo
installed as a package, plus a world-readable copy of nats-server, in a
directory of the test session's own under /opt (`session_dir`): a
DynamicUser= service cannot execute a Python under /root, and the
container's /tmp is its own. The directory (about 86 MB) is removed when
the session ends; one left by a session that was killed is removed by the
next session. Building it takes about 8 s.

`Machine` boots systemd in `systemd-nspawn`: the host's / bind-mounted in a
private mount namespace with a volatile overlay on top (writes vanish with
the container), a private network (only `lo`), its own cgroup subtree, and
no machined registration. Commands run inside through `nsenter`. `halt()`
stops it and removes its cgroups whatever state it is in.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SYSTEM_PYTHON = Path("/usr/bin/python3")
# Where session directories go: the venv's scripts name its real path, which
# the service must reach inside the container (PrivateTmp hides /tmp).
PARENT = Path(os.environ.get("KANADE_E2E_PARENT", "/opt"))
SESSION_PREFIX = "kanade-watchdog-e2e-"
INSTALL_PATH = "/opt/kanade-watchdog"  # where the shipped unit expects the venv
PATH_INSIDE = "/usr/sbin:/usr/bin:/sbin:/bin"
CGROUP = Path("/sys/fs/cgroup")
# The host's own enabled services must not start inside the container.
# (Debian's prometheus package enables its server and the node exporter.)
HOST_MASKS = (
    "postgresql.service",
    "systemd-timesyncd.service",
    "prometheus.service",
    "prometheus-node-exporter.service",
)


def missing_requirement() -> str | None:
    """Why the end-to-end tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "end-to-end tests need root (systemd-nspawn boots a container)"
    for tool, package in (
        ("systemd-nspawn", "systemd-container"),
        ("nsenter", "util-linux"),
        ("unshare", "util-linux"),
    ):
        if not shutil.which(tool):
            return f"{tool} not found (apt-get install {package})"
    if not SYSTEM_PYTHON.exists():
        return f"{SYSTEM_PYTHON} not found (apt-get install python3 python3-venv)"
    if not _cgroup_parents():
        return "no cgroup hierarchy to give the container its own subtree"
    return None


def _cgroup_parents() -> list[Path]:
    """Hierarchies the container needs a subtree in: hybrid (name=systemd +
    unified) or pure cgroup v2."""
    if (CGROUP / "systemd").is_dir() and (CGROUP / "unified").is_dir():
        return [CGROUP / "systemd", CGROUP / "unified"]
    if (CGROUP / "cgroup.controllers").exists():
        return [CGROUP]
    return []


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed ({proc.returncode}):\n{proc.stderr}")


@dataclass(frozen=True)
class Runtime:
    venv: Path
    nats_server: Path
    build_seconds: float


@contextlib.contextmanager
def session_dir(parent: Path = PARENT) -> Iterator[Path]:
    """A fresh directory under `parent` for one session, removed at its end.

    A live session holds a lock on its `<dir>.lock` (taken before the
    directory exists); a directory whose lock anyone can take belongs to a
    session that died, and is removed here."""
    parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    sweep_sessions(parent)
    fd, lock_name = tempfile.mkstemp(prefix=SESSION_PREFIX, suffix=".lock", dir=parent)
    lock = Path(lock_name)
    path = lock.with_suffix("")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        path.mkdir(mode=0o755)
        path.chmod(0o755)  # whatever the umask: the service's dynamic user reads it
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        lock.unlink(missing_ok=True)
        os.close(fd)


def sweep_sessions(parent: Path) -> list[Path]:
    """Remove what sessions that are no longer running left under `parent`."""
    removed = []
    for lock in parent.glob(f"{SESSION_PREFIX}*.lock"):
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # held: that session is still running
        else:
            shutil.rmtree(lock.with_suffix(""), ignore_errors=True)
            lock.unlink(missing_ok=True)
            removed.append(lock.with_suffix(""))
        finally:
            os.close(fd)
    return removed


def build_runtime(repo: Path, nats_binary: Path, base: Path) -> Runtime:
    """A venv with this checkout installed, and nats-server, in `base`."""
    started = time.monotonic()
    venv = base / "venv"
    python = str(venv / "bin" / "python")
    with tempfile.TemporaryDirectory(prefix="kwd-src-") as tmp:
        src = _source_copy(repo, Path(tmp))
        _run([str(SYSTEM_PYTHON), "-m", "venv", str(venv)])
        _run([python, "-m", "pip", "install", "-q", str(src)])
    # Precompiled here: under ProtectSystem=strict the service cannot.
    _run([python, "-m", "compileall", "-q", str(venv / "lib")])
    _run(["chmod", "-R", "a+rX", str(venv)])
    nats = base / "nats-server"
    shutil.copy(nats_binary, nats)
    nats.chmod(0o755)
    return Runtime(venv=venv, nats_server=nats, build_seconds=time.monotonic() - started)


def _source_copy(repo: Path, tmp: Path) -> Path:
    """Install from a copy: a build inside the checkout would leave build/ there."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        if (repo / name).exists():
            shutil.copy(repo / name, src / name)
    shutil.copytree(
        repo / "kanade_watchdog",
        src / "kanade_watchdog",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return src


class Machine:
    """One booted container. `binds` are (host path, path inside); `workdir` is a
    bound host directory for the test's files (the container's /tmp is its own)."""

    def __init__(self, *, workdir: Path, binds: list[tuple[Path, str]]) -> None:
        self.workdir = workdir
        self.log = workdir / "nspawn.log"
        self.name = f"kwd-{os.getpid()}-{secrets.token_hex(3)}"
        self.binds = [(workdir, str(workdir)), *binds]
        self.mountpoint = Path(tempfile.mkdtemp(prefix="kwd-root-"))
        self.cgroups = [parent / self.name for parent in _cgroup_parents()]
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0  # the container's PID 1, as the host sees it

    # --- life --------------------------------------------------------------------------

    def boot(self, within: float = 60.0) -> float:
        """Start the container and wait until its manager is up; returns seconds."""
        started = time.monotonic()
        for cg in self.cgroups:
            cg.mkdir()
        nspawn = [
            "systemd-nspawn",
            "--quiet",
            f"--machine={self.name}",
            f"--directory={self.mountpoint}",
            "--volatile=overlay",
            "--private-network",
            "--register=no",
            "--keep-unit",
            "--console=passive",
            *(f"--bind={host}:{inside}" for host, inside in self.binds),
            "--boot",
            "--",
            *(f"systemd.mask={unit}" for unit in HOST_MASKS),
        ]
        # Own cgroup subtree first, then a private mount namespace in which / is
        # bind-mounted (nspawn refuses / itself as the directory).
        inner = f'mount --bind / {shlex.quote(str(self.mountpoint))} && exec "$@"'
        script = "".join(
            f"echo $$ > {shlex.quote(str(cg / 'cgroup.procs'))}\n" for cg in self.cgroups
        ) + shlex.join(
            [
                "exec",
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                inner,
                "sh",
                *nspawn,
            ]
        )
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                ["sh", "-c", script],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        deadline = started + within
        while not self.leader:
            self._check_alive()
            self.leader = self._find_leader()
            if time.monotonic() > deadline:
                raise RuntimeError(f"container did not start:\n{self.log_tail()}")
            time.sleep(0.02)
        while True:
            state = self.run("systemctl", "is-system-running", "--wait", check=False)
            if state.stdout.strip() in ("running", "degraded"):
                break
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"container manager not up: {state.stdout}{state.stderr}")
            time.sleep(0.05)
        return time.monotonic() - started

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"systemd-nspawn exited {self.proc.returncode}:\n{self.log_tail()}")

    def _find_leader(self) -> int:
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        with contextlib.suppress(OSError):
            for pid in children.read_text().split():
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                        return int(pid)
        return 0

    def halt(self) -> float:
        """Stop the container (nspawn halts it on SIGTERM), kill whatever is left
        in its cgroups, remove them. Safe to call in any state; returns seconds."""
        started = time.monotonic()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for _ in range(100):
            left = self._cgroup_pids()
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if self._remove_cgroups() and not left:
                break
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            self.mountpoint.rmdir()
        return time.monotonic() - started

    def _cgroup_pids(self) -> set[int]:
        pids: set[int] = set()
        for cg in self.cgroups:
            if cg.exists():
                for procs in cg.rglob("cgroup.procs"):
                    with contextlib.suppress(OSError):
                        pids.update(int(p) for p in procs.read_text().split())
        return pids

    def _remove_cgroups(self) -> bool:
        for cg in self.cgroups:
            if not cg.exists():
                continue
            for sub in sorted(
                (p for p in cg.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
            ):
                with contextlib.suppress(OSError):
                    sub.rmdir()
            with contextlib.suppress(OSError):
                cg.rmdir()
        return not any(cg.exists() for cg in self.cgroups)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # --- inside ------------------------------------------------------------------------

    def run(
        self, *argv: str, check: bool = True, stdin: str | None = None, within: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """A command inside the container, as root, with a clean environment."""
        assert self.leader, "container not booted"
        proc = subprocess.run(
            [
                "nsenter",
                "-t",
                str(self.leader),
                "-a",
                "env",
                "-i",
                f"PATH={PATH_INSIDE}",
                "LANG=C.UTF-8",
                "SYSTEMD_PAGER=",
                "SYSTEMD_COLORS=0",
                *argv,
            ],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            timeout=within,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"inside {self.name}: {shlex.join(argv)} exited {proc.returncode}\n"
                f"{proc.stdout}{proc.stderr}"
            )
        return proc

    def write(self, path: str, text: str, mode: str = "0644") -> None:
        """Write a file inside (it lands in the volatile overlay)."""
        self.run(
            "sh",
            "-c",
            'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"',
            "sh",
            path,
            mode,
            stdin=text,
        )

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args, check=check)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, "-p", ",".join(props)).stdout
        return dict(line.partition("=")[::2] for line in out.splitlines() if "=" in line)

    def journal(self, *args: str) -> list[dict[str, object]]:
        """Journal entries as JSON objects (`journalctl -o json ...`)."""
        out = self.run("journalctl", "--no-pager", "-o", "json", *args, check=False).stdout
        entries = []
        for line in out.splitlines():
            if line.startswith("{"):
                doc = json.loads(line)
                assert isinstance(doc, dict)
                entries.append(doc)
        return entries

    def cursor(self) -> str:
        """The journal's current end, to read only what comes after."""
        out = self.run("journalctl", "--no-pager", "-n", "0", "--show-cursor").stdout
        for line in out.splitlines():
            if line.startswith("-- cursor: "):
                return line.removeprefix("-- cursor: ").strip()
        return ""
