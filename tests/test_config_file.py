"""The config path (and every secret file it names) must be a regular file: a
FIFO, a device, a socket or a directory is refused at once with one line and
never read, so a FIFO cannot block `validate`, `run` or a reload."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from kanade_watchdog.config.load import load
from kanade_watchdog.model.errors import ConfigError
from tests.helpers_streams import run_cli

BASE = '[streams.S]\nsubjects = ["s.>"]\n'


def only_line(path: Path | str) -> str:
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert len(info.value.problems) == 1, info.value.problems
    line = info.value.problems[0]
    assert line.startswith(f"{path}: ")
    return line


@pytest.mark.parametrize("command", ["validate", "plan", "run"])
async def test_a_fifo_as_the_config_is_refused_at_once(tmp_path: Path, command: str) -> None:
    """A FIFO given as the config file ends the command with exit 78 and one line,
    instead of waiting forever for a writer."""
    fifo = tmp_path / "watchdog.toml"
    os.mkfifo(fifo)
    run = await run_cli(command, config=fifo, limit_seconds=20)
    assert run.code == 78, run.stderr
    lines = [line for line in run.stderr.splitlines() if "config error" in line]
    assert len(lines) == 1, run.stderr
    assert lines[0].endswith(f"config error: {fifo}: is a FIFO, not a regular file")


async def test_a_symlink_to_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    """A link to a FIFO is judged by what it points to."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "watchdog.toml"
    link.symlink_to(fifo)
    run = await run_cli("validate", config=link, limit_seconds=20)
    assert run.code == 78
    assert run.stderr.splitlines() == [f"config error: {link}: is a FIFO, not a regular file"]


@pytest.mark.parametrize("key", ["token_file", "password_file", "nkey_seed_file", "creds_file"])
async def test_a_fifo_as_a_secret_file_is_refused_at_once(tmp_path: Path, key: str) -> None:
    """A FIFO named as a secret file is refused with one line naming the key."""
    fifo = tmp_path / "secret"
    os.mkfifo(fifo)
    user = 'user = "u"\n' if key == "password_file" else ""
    config = tmp_path / "watchdog.toml"
    config.write_text(f'[nats]\n{user}{key} = "{fifo}"\n' + BASE)
    run = await run_cli("validate", config=config, limit_seconds=20)
    assert run.code == 78
    assert run.stderr.splitlines() == [
        f"config error: {config}: nats.{key}: is a FIFO, not a regular file, got '{fifo}'"
    ]


@pytest.mark.parametrize(
    ("device", "what"), [("/dev/zero", "a character device"), ("/dev/null", "a character device")]
)
def test_a_device_is_refused(device: str, what: str) -> None:
    """/dev/zero (endless) and /dev/null are refused by kind, not read."""
    if not os.path.exists(device):
        pytest.skip(f"{device} is not available here")
    assert only_line(device) == f"{device}: is {what}, not a regular file"


@pytest.fixture
def unix_socket(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "watchdog.toml"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        yield path


def test_a_socket_is_refused(unix_socket: Path) -> None:
    """A UNIX socket at the config path is refused by kind."""
    assert only_line(unix_socket) == f"{unix_socket}: is a socket, not a regular file"


def test_a_directory_is_refused(tmp_path: Path) -> None:
    """A directory at the config path is refused by kind."""
    assert only_line(tmp_path) == f"{tmp_path}: is a directory, not a regular file"


def test_a_regular_file_through_a_symlink_loads(tmp_path: Path) -> None:
    """A symlink to a regular file (a common way to switch configs) still loads."""
    real = tmp_path / "real.toml"
    real.write_text(BASE)
    link = tmp_path / "watchdog.toml"
    link.symlink_to(real)
    assert load(str(link)).resources[0].name == "S"
