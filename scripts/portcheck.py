"""Port checks for `make run` (scripts/run-local), so the demo never talks to a
broker it did not start. Standard library only; it never connects to a port,
so whatever already listens there sees nothing.

    portcheck.py pick PORT          print PORT if it can be bound on 127.0.0.1,
                                    else a free port the kernel picks
    portcheck.py wait PID PORT [S]  wait until process PID listens on PORT:
                                    exit 0 once it does, 1 if PID exits first,
                                    2 after S seconds (default 10)
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp*


def bindable(port: int) -> bool:
    """True when a server could listen on 127.0.0.1:port now. SO_REUSEADDR as
    nats-server (Go) sets it: a socket in TIME_WAIT does not block, a
    listener does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def listening_inodes(port: int, proc: Path = Path("/proc")) -> set[str]:
    """Socket inodes listening on `port` (any address, IPv4 or IPv6)."""
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes


def listens(pid: int, port: int, proc: Path = Path("/proc")) -> bool:
    """True when process `pid` itself holds a socket listening on `port`."""
    wanted = {f"socket:[{inode}]" for inode in listening_inodes(port, proc)}
    if not wanted:
        return False
    try:
        fds = list((proc / str(pid) / "fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd) in wanted:
                return True
        except OSError:
            continue
    return False


def alive(pid: int) -> bool:
    try:
        # A zombie (exited, not yet reaped by the script) counts as gone.
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait(pid: int, port: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if listens(pid, port):
            return 0
        if not alive(pid):
            return 1
        time.sleep(0.02)
    return 2


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "pick":
        port = int(argv[1])
        print(port if bindable(port) else free_port())
        return 0
    if len(argv) in (3, 4) and argv[0] == "wait":
        seconds = float(argv[3]) if len(argv) == 4 else 10.0
        return wait(int(argv[1]), int(argv[2]), seconds)
    print(__doc__, file=sys.stderr)
    return 64


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
