"""Authentication, TLS, least privilege, JetStream domains and secrets that never print.

Every broker here is a real nats-server whose config the test writes: an
`authorization` block with a token, users with passwords or NKeys, operator
mode with JWTs and a creds file (`nkeyfiles`), a `tls` block with a CA made
for the test (`certs`), a JetStream domain, a leafnode pair. The watchdog
runs as an operator runs it: the command line and the daemon as
subprocesses. An admin client checks what really happened on the broker.
The least-privilege block and the systemd credential example are read from
docs/SECURITY.md, so what the documentation says is what is tested.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from kanade_watchdog.config.load import ENV_TOKEN, load
from kanade_watchdog.model.errors import ConfigError
from tests import jsapi
from tests.audit import WATCHDOG_NAME, audited
from tests.certs import Ca, Cert, make_ca
from tests.conftest import REPO, StartServer
from tests.daemonproc import DaemonProc, has_message, is_action
from tests.helpers_streams import CliRun, raw_create, raw_update, stream_names
from tests.natsserver import NatsServer, free_port
from tests.nkeyfiles import NKey, Operator, new_nkey, new_operator, nkey_sign
from tests.sdnotify import NotifiedDaemon

SECURITY_DOC = REPO / "docs" / "SECURITY.md"
WATCHDOG_USER = "kanade-watchdog"  # the user name in the documented block
MIB = 1024**2
CLI_LIMIT = 30.0

RESOURCES = """
[streams.ORDERS]
subjects = ["orders.>"]
max_bytes = "1MiB"

[kv_buckets.settings]
history = 1

[object_stores.blobs]
max_bytes = "1MiB"
"""
STREAMS = frozenset({"ORDERS", "KV_settings", "OBJ_blobs"})
WATCHED = '[streams.WATCHED]\nsubjects = ["watched.>"]\nmax_bytes = "1MiB"\n'
WATCHDOG = """
[watchdog]
resync_interval = "1h"
resync_jitter = "0s"
backoff_initial = "50ms"
backoff_max = "1s"
permanent_retry = "1s"
stop_timeout = "3s"
"""


# --- secrets, brokers, configs ----------------------------------------------------------


def secret(label: str) -> str:
    """A long random secret: any leak of it is unmistakable."""
    return f"{label}-{secrets.token_hex(16)}"


@dataclass(frozen=True)
class Creds:
    """The secrets of one test: the watchdog's and the admin's."""

    token: str
    password: str
    nkey: NKey
    admin_password: str


def new_creds() -> Creds:
    return Creds(
        token=secret("tok"),
        password=secret("pw"),
        nkey=new_nkey(),
        admin_password=secret("admin"),
    )


def users_conf(creds: Creds) -> str:
    """An admin, and the watchdog as a password user and as an NKey user, all
    with every right (least privilege has its own tests)."""
    return (
        "authorization {\n  users = [\n"
        f'    {{ user: "admin", password: "{creds.admin_password}" }}\n'
        f'    {{ user: "{WATCHDOG_USER}", password: "{creds.password}" }}\n'
        f'    {{ nkey: "{creds.nkey.public}" }}\n'
        "  ]\n}\n"
    )


def token_conf(token: str) -> str:
    return f'authorization {{ token: "{token}" }}\n'


def documented_block(marker: str) -> str:
    """The fenced code block that follows `<!-- tested: marker -->` in SECURITY.md."""
    text = SECURITY_DOC.read_text()
    at = text.index(f"<!-- tested: {marker} -->")
    fence = text.index("```", at)
    body = text.index("\n", fence) + 1
    return text[body : text.index("```", body)]


def least_privilege_conf(
    creds: Creds,
    *,
    drop: tuple[str, ...] = (),
    domain: str | None = None,
    keep_plain: bool = False,
) -> str:
    """The documented least-privilege block as the broker's authorization, with
    the test's password, an admin user, and optionally some grants taken out
    or the API subjects moved to a JetStream domain (`keep_plain`: granted
    under both prefixes, as SECURITY.md says for the domain's own servers)."""
    block = documented_block("least-privilege")
    block, n = re.subn(r'password: "[^"]*"', f'password: "{creds.password}"', block)
    assert n == 1, block
    block = block.replace(
        "users = [", f'users = [\n    {{ user: "admin", password: "{creds.admin_password}" }}', 1
    )
    for subject in drop:
        block, n = re.subn(rf'^\s*"{re.escape(subject)}"\n', "", block, flags=re.M)
        assert n == 1, f"{subject} is not in the documented block"
    if domain is not None:
        api = re.compile(r'^(\s*)"\$JS\.API\.(.*)"$', re.M)
        plain = r'\1"$JS.API.\2"\n' if keep_plain else ""
        block = api.sub(plain + rf'\1"$JS.{domain}.API.\2"', block)
    return block


def write_config(
    path: Path,
    url: str,
    auth: str = "",
    *,
    mode: int = 0o600,
    resources: str = RESOURCES,
) -> Path:
    """A watchdog config: `auth` lines (and a trailing [nats.tls] table) go in [nats]."""
    path.write_text(
        "[nats]\n"
        f'servers = ["{url}"]\n'
        f'name = "{WATCHDOG_NAME}"\n'
        'connect_timeout = "1s"\n'
        'request_timeout = "500ms"\n'
        'reconnect_wait = "100ms"\n'
        f"{auth}\n{WATCHDOG}{resources}"
    )
    path.chmod(mode)
    return path


def secret_file(path: Path, value: str) -> Path:
    """A secret as an operator writes one: private, with a final newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def creds_file(path: Path, operator: Operator) -> Path:
    path.write_text(operator.creds())
    path.chmod(0o600)
    return path


def tls_lines(
    ca: Ca,
    *,
    client: Cert | None = None,
    server_name: str | None = None,
    verify: bool | None = None,
) -> str:
    out = ["[nats.tls]", f'ca_file = "{ca.cert}"']
    if client is not None:
        out += [f'cert_file = "{client.cert}"', f'key_file = "{client.key}"']
    if server_name is not None:
        out.append(f'server_name = "{server_name}"')
    if verify is not None:
        out.append(f"verify = {'true' if verify else 'false'}")
    return "\n".join(out) + "\n"


def tls_conf(cert: Cert, *, client_ca: Ca | None = None) -> str:
    """The broker's tls block; with `client_ca`, client certificates are required."""
    mutual = f'\n  ca_file: "{client_ca.cert}"\n  verify: true' if client_ca else ""
    return (
        f'tls {{\n  cert_file: "{cert.cert}"\n  key_file: "{cert.key}"{mutual}\n  timeout: 2\n}}\n'
    )


@pytest.fixture
def daemons() -> Iterator[list[DaemonProc | NotifiedDaemon]]:
    """Daemons a test started: killed at teardown whatever happened."""
    procs: list[DaemonProc | NotifiedDaemon] = []
    yield procs
    for proc in procs:
        if isinstance(proc, DaemonProc):
            proc.close()
        else:
            proc.stop()


@asynccontextmanager
async def admin(url: str, **auth: Any) -> AsyncIterator[Client]:
    """A client with every right: the test's eyes on the broker."""
    nc = await nats.connect(
        url, name="admin", error_cb=jsapi.quiet_error, connect_timeout=2, **auth
    )
    try:
        yield nc
    finally:
        await nc.close()


async def cli(
    *args: str, config: Path, env: Mapping[str, str] | None = None, limit: float = CLI_LIMIT
) -> CliRun:
    """`python -m kanade_watchdog ARGS --config CONFIG` as an operator runs it, with
    no token or credentials directory from the test's own environment. No
    command may ever print a traceback."""
    full_env = {
        k: v for k, v in os.environ.items() if k not in (ENV_TOKEN, "CREDENTIALS_DIRECTORY")
    }
    full_env.update(env or {})
    argv = [sys.executable, "-m", "kanade_watchdog", *args, "--config", str(config)]
    started = time.monotonic()
    proc = await asyncio.to_thread(
        subprocess.run,
        argv,
        capture_output=True,
        text=True,
        timeout=limit,
        cwd=REPO,
        env=full_env,
        check=False,
    )
    run = CliRun(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)
    assert "Traceback" not in run.stdout + run.stderr, run.stderr
    return run


def violations(srv: NatsServer) -> list[str]:
    """The broker's log lines about a denied publish or subscription."""
    return [line for line in srv.log.read_text().splitlines() if "Violation" in line]


# --- configuration: where secrets come from (no network) ---------------------------------


def test_inline_secret_is_accepted_only_in_a_private_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An inline token or password loads from a 0600 file and is a config error,
    naming the key and the fix but never the secret, in a group/other-readable one."""
    monkeypatch.delenv(ENV_TOKEN, raising=False)
    creds = new_creds()
    url = "nats://127.0.0.1:4222"
    inline = {
        "token": (f'token = "{creds.token}"', creds.token),
        "password": (f'user = "{WATCHDOG_USER}"\npassword = "{creds.password}"', creds.password),
    }
    for key, (lines, expected) in inline.items():
        private = load(str(write_config(tmp_path / f"{key}-600.toml", url, lines)))
        value = private.nats.token if key == "token" else private.nats.password
        assert value is not None
        assert value.reveal() == expected
        assert creds.token not in repr(private)
        assert creds.password not in repr(private)
        for mode in (0o644, 0o640, 0o604):
            path = write_config(tmp_path / f"{key}-{mode:o}.toml", url, lines, mode=mode)
            with pytest.raises(ConfigError) as caught:
                load(str(path))
            [problem] = caught.value.problems
            assert f"nats.{key}: an inline secret needs a config file only its owner" in problem
            assert f"(mode {mode:04o}); chmod 600 it or use {key}_file" in problem
            assert creds.token not in problem
            assert creds.password not in problem


def test_secret_files_and_systemd_credentials_directory_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """token_file and password_file are read (final newline dropped), and
    $CREDENTIALS_DIRECTORY / ${CREDENTIALS_DIRECTORY} expand in every *_file key."""
    monkeypatch.delenv(ENV_TOKEN, raising=False)
    creds = new_creds()
    url = "nats://127.0.0.1:4222"
    plain = secret_file(tmp_path / "token", creds.token)
    config = load(str(write_config(tmp_path / "a.toml", url, f'token_file = "{plain}"')))
    assert config.nats.token is not None
    assert config.nats.token.reveal() == creds.token

    credentials = tmp_path / "credentials"
    secret_file(credentials / "nats-password", creds.password)
    secret_file(credentials / "nats-nkey", creds.nkey.seed)
    secret_file(credentials / "nats-creds", "not parsed until connecting")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    config = load(
        str(
            write_config(
                tmp_path / "b.toml",
                url,
                f'user = "{WATCHDOG_USER}"\n'
                'password_file = "${CREDENTIALS_DIRECTORY}/nats-password"',
            )
        )
    )
    assert config.nats.password is not None
    assert config.nats.password.reveal() == creds.password
    for key, name in (("nkey_seed_file", "nats-nkey"), ("creds_file", "nats-creds")):
        lines = f'{key} = "$CREDENTIALS_DIRECTORY/{name}"'
        config = load(str(write_config(tmp_path / f"{key}.toml", url, lines)))
        assert getattr(config.nats, key) == str(credentials / name)


def test_credentials_directory_unset_or_files_missing_are_config_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A *_file under an unset $CREDENTIALS_DIRECTORY says to add LoadCredential=;
    a missing or empty secret file is an error naming its key, before any connection."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    url = "nats://127.0.0.1:4222"
    path = write_config(tmp_path / "a.toml", url, 'token_file = "$CREDENTIALS_DIRECTORY/tok"')
    with pytest.raises(ConfigError) as caught:
        load(str(path))
    problem, *rest = caught.value.problems
    assert "nats.token_file: refers to $CREDENTIALS_DIRECTORY, which is not set" in problem
    assert "LoadCredential=" in problem
    assert all(": nats.token_file: " in line for line in rest), rest

    missing = tmp_path / "nowhere"
    for key in ("token_file", "nkey_seed_file", "creds_file"):
        path = write_config(tmp_path / f"{key}.toml", url, f'{key} = "{missing}"')
        with pytest.raises(ConfigError) as caught:
            load(str(path))
        assert caught.value.problems == [f"{path}: nats.{key}: no such file, got '{missing}'"]
    empty = tmp_path / "empty"
    empty.write_text("\n")
    path = write_config(tmp_path / "empty.toml", url, f'token_file = "{empty}"')
    with pytest.raises(ConfigError, match=r"nats\.token_file: must hold one secret"):
        load(str(path))


def test_environment_token_is_used_only_when_no_auth_is_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KANADE_NATS_TOKEN authenticates a config that names no way to; a config that
    names one (here user + password_file) is never overridden by it."""
    creds = new_creds()
    monkeypatch.setenv(ENV_TOKEN, creds.token)
    url = "nats://127.0.0.1:4222"
    config = load(str(write_config(tmp_path / "a.toml", url)))
    assert config.nats.token is not None
    assert config.nats.token.reveal() == creds.token
    pw = secret_file(tmp_path / "pw", creds.password)
    lines = f'user = "{WATCHDOG_USER}"\npassword_file = "{pw}"'
    config = load(str(write_config(tmp_path / "b.toml", url, lines)))
    assert config.nats.token is None
    assert config.nats.password is not None
    assert config.nats.password.reveal() == creds.password


def test_documented_systemd_credentials_example_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The LoadCredential= drop-in and the config in SECURITY.md fit together: every
    $CREDENTIALS_DIRECTORY file the config names is a credential the drop-in loads,
    and the config loads with the token and client key read from there."""
    dropin = documented_block("systemd-dropin")
    toml = documented_block("systemd-config")
    assert dropin.lstrip().startswith("[Service]")
    loaded: dict[str, str] = {}
    for line in dropin.splitlines():
        if line.startswith("LoadCredential="):
            name, _, source = line.partition("=")[2].partition(":")
            loaded[name] = source
    named = set(re.findall(r"\$CREDENTIALS_DIRECTORY/([\w.-]+)", toml))
    assert named, toml
    assert named <= set(loaded), (named, loaded)

    ca = make_ca(tmp_path / "pki")
    client = ca.issue("watchdog", client=True)
    credentials = tmp_path / "credentials"
    creds = new_creds()
    secret_file(credentials / "nats-token", creds.token)
    (credentials / "nats-client.key").write_bytes(client.key.read_bytes())
    text = (
        toml.replace("/etc/kanade/tls/ca.pem", str(ca.cert))
        .replace("/etc/kanade/tls/watchdog.pem", str(client.cert))
        .replace("tls://broker.example.net:4222", "nats://127.0.0.1:4222")
    )
    path = tmp_path / "watchdog.toml"
    path.write_text(text + RESOURCES)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    monkeypatch.delenv(ENV_TOKEN, raising=False)
    config = load(str(path))
    assert config.nats.token is not None
    assert config.nats.token.reveal() == creds.token
    assert config.nats.tls is not None
    assert config.nats.tls.key_file == str(credentials / "nats-client.key")


# --- each way to authenticate, against a real broker --------------------------------------


@dataclass(frozen=True)
class AuthCase:
    """One way to authenticate: the broker it needs and the watchdog's side."""

    broker_conf: str
    lines: str
    env: dict[str, str]
    admin: dict[str, Any]  # how the test's admin client logs in
    held: str  # the secret the watchdog is given, which must never print


def auth_case(mode: str, creds: Creds, tmp: Path, *, wrong: bool = False) -> AuthCase:
    """The broker and the [nats] lines for `mode`; `wrong` gives the watchdog a
    secret the broker does not accept."""
    token = secret("bad-tok") if wrong else creds.token
    password = secret("bad-pw") if wrong else creds.password
    nkey = new_nkey() if wrong else creds.nkey
    users = users_conf(creds)
    as_admin: dict[str, Any] = {"user": "admin", "password": creds.admin_password}
    credentials = tmp / "credentials"
    if mode == "token":
        return AuthCase(
            token_conf(creds.token), f'token = "{token}"', {}, {"token": creds.token}, token
        )
    if mode == "token_file":
        path = secret_file(tmp / "nats-token", token)
        return AuthCase(
            token_conf(creds.token), f'token_file = "{path}"', {}, {"token": creds.token}, token
        )
    if mode == "credentials_directory":
        secret_file(credentials / "nats-token", token)
        return AuthCase(
            token_conf(creds.token),
            'token_file = "$CREDENTIALS_DIRECTORY/nats-token"',
            {"CREDENTIALS_DIRECTORY": str(credentials)},
            {"token": creds.token},
            token,
        )
    if mode == "environment":
        return AuthCase(
            token_conf(creds.token), "", {ENV_TOKEN: token}, {"token": creds.token}, token
        )
    if mode == "password":
        lines = f'user = "{WATCHDOG_USER}"\npassword = "{password}"'
        return AuthCase(users, lines, {}, as_admin, password)
    if mode == "password_file":
        secret_file(credentials / "nats-password", password)
        lines = (
            f'user = "{WATCHDOG_USER}"\npassword_file = "${{CREDENTIALS_DIRECTORY}}/nats-password"'
        )
        env = {"CREDENTIALS_DIRECTORY": str(credentials)}
        return AuthCase(users, lines, env, as_admin, password)
    if mode == "nkey":
        path = secret_file(tmp / "watchdog.nk", nkey.seed)
        return AuthCase(users, f'nkey_seed_file = "{path}"', {}, as_admin, nkey.seed)
    raise AssertionError(mode)


AUTH_MODES = [
    "token",
    "token_file",
    "credentials_directory",
    "environment",
    "password",
    "password_file",
    "nkey",
]


@pytest.mark.parametrize("mode", AUTH_MODES)
async def test_each_way_to_authenticate_connects(
    mode: str, tmp_path: Path, start_server: StartServer
) -> None:
    """With the broker requiring that credential, `apply` authenticates, creates the
    three resources and exits 0; the broker has them."""
    creds = new_creds()
    case = auth_case(mode, creds, tmp_path)
    srv = start_server(NatsServer(tmp_path, extra_conf=case.broker_conf))
    config = write_config(tmp_path / "watchdog.toml", srv.url, case.lines)
    run = await cli("apply", "--json", config=config, env=case.env)
    assert run.code == 0, run.stderr
    assert {r["stream"]: r["result"] for r in run.json()["resources"]} == dict.fromkeys(
        STREAMS, "created"
    )
    async with admin(srv.url, **case.admin) as nc:
        assert await stream_names(nc) >= STREAMS


async def test_credentials_file_connects_in_operator_mode(
    tmp_path: Path, start_server: StartServer
) -> None:
    """Against a broker trusting an operator (JWT accounts), a creds file made for a
    user of a JetStream account lets `apply` create everything and `check` see it."""
    operator = new_operator()
    srv = start_server(NatsServer(tmp_path, extra_conf=operator.server_conf(tmp_path)))
    path = creds_file(tmp_path / "watchdog.creds", operator)
    config = write_config(tmp_path / "watchdog.toml", srv.url, f'creds_file = "{path}"')
    applied = await cli("apply", config=config)
    assert applied.code == 0, applied.stderr
    checked = await cli("check", config=config)
    assert checked.code == 0, checked.stdout
    assert checked.stdout.startswith("JETSTREAM OK - 3/3 in sync")


def test_generated_nkey_pair_is_accepted_by_the_broker(
    tmp_path: Path, start_server: StartServer
) -> None:
    """The NKey users the tests configure are right: a raw CONNECT signed with the
    seed is accepted (PONG), one signed with another seed is refused. So an NKey
    test that fails does so on the client side."""
    creds = new_creds()
    srv = start_server(NatsServer(tmp_path, extra_conf=users_conf(creds)))
    for signer, expected in ((creds.nkey, b"PONG"), (new_nkey(), b"-ERR 'Authorization")):
        with (
            socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock,
            sock.makefile("rb") as reader,
        ):
            info = json.loads(reader.readline()[len("INFO ") :])
            connect = {
                "nkey": creds.nkey.public,
                "sig": nkey_sign(signer, info["nonce"].encode()),
                "verbose": False,
                "pedantic": False,
                "protocol": 1,
            }
            sock.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
            assert reader.readline().startswith(expected)


@pytest.mark.parametrize("mode", ["token", "password", "nkey"])
async def test_wrong_credentials_are_refused_with_a_clear_error(
    mode: str, tmp_path: Path, start_server: StartServer
) -> None:
    """A secret the broker refuses: `apply` exits 1 and `check` is CRITICAL, both
    saying the authorization was refused after one login each (a one-shot
    command does not retry), neither printing the secret."""
    creds = new_creds()
    case = auth_case(mode, creds, tmp_path, wrong=True)
    srv = start_server(NatsServer(tmp_path, extra_conf=case.broker_conf))
    config = write_config(tmp_path / "watchdog.toml", srv.url, case.lines)
    applied, checked = await asyncio.gather(
        cli("apply", config=config, env=case.env), cli("check", config=config, env=case.env)
    )
    expected = (
        f"cannot connect to {srv.url}: authorization refused (check the credentials in [nats])"
    )
    assert applied.code == 1
    assert applied.stderr.strip() == f"broker error: {expected}"
    assert checked.code == 2
    assert checked.stdout.strip() == f"JETSTREAM CRITICAL - broker unreachable: {expected}"
    assert len(auth_failures(srv)) == 2, srv.log.read_text()[-2000:]
    seen = applied.stdout + applied.stderr + checked.stdout + checked.stderr
    assert case.held not in seen


def auth_failures(srv: NatsServer) -> list[float]:
    """When the broker refused a login, from its log (seconds, wall clock)."""
    out = []
    for line in srv.log.read_text().splitlines():
        if " - authentication error" in line:
            _, day, clock, *_ = line.split(" ")
            out.append(datetime.strptime(f"{day} {clock}", "%Y/%m/%d %H:%M:%S.%f").timestamp())
    return out


CONNECT_TRIES = 6  # refused logins watched: the announced pauses grow past 1 s by then


def next_wait(line: dict[str, Any]) -> float:
    """The pause a `cannot connect yet` line announces before the next try."""
    found = re.search(r"next in ([0-9.]+)s\)$", str(line["message"]))
    assert found, line
    return float(found[1])


async def test_daemon_with_wrong_credentials_backs_off_and_says_why(
    tmp_path: Path,
    start_server: StartServer,
    daemons: list[DaemonProc | NotifiedDaemon],
) -> None:
    """A daemon whose token the broker refuses keeps running and retrying, each
    pause it announces at least as long as the one before and past a second
    after a handful of tries (never a tight loop: every refused login on the
    broker is a try it announced), and warns 'authorization refused' once, not
    once per try."""
    creds = new_creds()
    srv = start_server(NatsServer(tmp_path, extra_conf=token_conf(creds.token)))
    bad = secret_file(tmp_path / "token", secret("bad-tok"))
    config = write_config(tmp_path / "watchdog.toml", srv.url, f'token_file = "{bad}"')
    daemon = DaemonProc(config).start()
    daemons.append(daemon)
    tries = await daemon.wait_for(has_message("cannot connect yet"), n=CONNECT_TRIES, within=60)
    refused = len(auth_failures(srv))
    assert daemon.alive
    # The broker refused exactly the announced tries (and the one under way, if any).
    assert CONNECT_TRIES <= refused <= daemon.count(has_message("cannot connect yet")) + 1
    waits = [next_wait(line) for line in tries]
    assert waits == sorted(waits), waits
    assert waits[-1] >= 1.0, waits
    warnings = [line for line in tries if line.get("level") == "warning"]
    assert len(warnings) == 1, warnings
    assert "authorization refused (check the credentials in [nats])" in warnings[0]["message"]
    assert daemon.find(is_action("ready")) == []


async def test_reload_with_corrected_credentials_connects_without_a_restart(
    tmp_path: Path,
    start_server: StartServer,
    daemons: list[DaemonProc | NotifiedDaemon],
) -> None:
    """A daemon refused for a wrong token, whose token file is then corrected,
    connects and gets ready soon after `systemctl reload` (SIGHUP)."""
    creds = new_creds()
    srv = start_server(NatsServer(tmp_path, extra_conf=token_conf(creds.token)))
    token = secret_file(tmp_path / "token", secret("bad-tok"))
    config = write_config(tmp_path / "watchdog.toml", srv.url, f'token_file = "{token}"')
    daemon = DaemonProc(config).start()
    daemons.append(daemon)
    await daemon.wait_for(has_message("authorization refused"), within=5)
    secret_file(token, creds.token)
    mark = daemon.mark()
    daemon.send(signal.SIGHUP)
    [reloaded] = await daemon.wait_for(is_action("reloaded"), after=mark, within=10)
    [ready] = await daemon.wait_for(is_action("ready"), after=mark, within=10)
    assert daemon.lines.index(reloaded) < daemon.lines.index(ready)


# --- TLS --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Ca
    other_ca: Ca
    server: Cert  # 127.0.0.1 and localhost
    named: Cert  # broker.test only
    client: Cert  # a client certificate of `ca`
    stranger: Cert  # a client certificate of `other_ca`


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = make_ca(root / "ca")
    other = make_ca(root / "other", "other-ca")
    return Pki(
        ca=ca,
        other_ca=other,
        server=ca.issue("server", dns=("localhost",), ips=("127.0.0.1",)),
        named=ca.issue("named", dns=("broker.test",)),
        client=ca.issue("watchdog", client=True),
        stranger=other.issue("stranger", client=True),
    )


async def test_tls_with_the_test_ca_works_and_a_wrong_ca_is_refused(
    tmp_path: Path, pki: Pki, start_server: StartServer
) -> None:
    """Over TLS with a CA made here, `apply` works; trusting another CA is refused
    with 'certificate verify failed'; verify = false is the explicit way around it."""
    srv = start_server(NatsServer(tmp_path, extra_conf=tls_conf(pki.server)))
    good = write_config(tmp_path / "good.toml", srv.url, tls_lines(pki.ca))
    wrong = write_config(tmp_path / "wrong.toml", srv.url, tls_lines(pki.other_ca))
    unverified = write_config(
        tmp_path / "unverified.toml", srv.url, tls_lines(pki.other_ca, verify=False)
    )
    applied, refused, blind = await asyncio.gather(
        cli("apply", config=good), cli("plan", config=wrong), cli("plan", config=unverified)
    )
    assert applied.code == 0, applied.stderr
    assert "3 created" in applied.stdout
    assert refused.code == 1
    assert refused.stderr.startswith(f"broker error: cannot connect to {srv.url}: ")
    assert "certificate verify failed: unable to get local issuer certificate" in refused.stderr
    # Connected (it runs beside the apply, so it may see the streams or not yet).
    assert blind.code in (0, 2), blind.stderr
    assert "/3 in sync" in blind.stdout


async def test_server_name_is_verified_by_default(
    tmp_path: Path, pki: Pki, start_server: StartServer
) -> None:
    """A certificate for broker.test reached as 127.0.0.1 is refused (IP address
    mismatch) unless server_name = "broker.test"; a wrong server_name is refused too."""
    srv = start_server(NatsServer(tmp_path, extra_conf=tls_conf(pki.named)))
    default = write_config(tmp_path / "a.toml", srv.url, tls_lines(pki.ca))
    named = write_config(tmp_path / "b.toml", srv.url, tls_lines(pki.ca, server_name="broker.test"))
    other = write_config(tmp_path / "c.toml", srv.url, tls_lines(pki.ca, server_name="other.test"))
    by_ip, by_name, by_other = await asyncio.gather(
        cli("plan", config=default), cli("apply", config=named), cli("plan", config=other)
    )
    assert by_ip.code == 1
    assert "certificate is not valid for '127.0.0.1'" in by_ip.stderr
    assert by_name.code == 0, by_name.stderr
    assert by_other.code == 1
    assert "Hostname mismatch, certificate is not valid for 'other.test'" in by_other.stderr


async def test_mutual_tls_needs_a_client_certificate_of_the_brokers_ca(
    tmp_path: Path, pki: Pki, start_server: StartServer
) -> None:
    """A broker that verifies clients accepts the watchdog's certificate and key
    and refuses a connection without one or with a certificate of another CA."""
    srv = start_server(NatsServer(tmp_path, extra_conf=tls_conf(pki.server, client_ca=pki.ca)))
    with_cert = write_config(tmp_path / "a.toml", srv.url, tls_lines(pki.ca, client=pki.client))
    without = write_config(tmp_path / "b.toml", srv.url, tls_lines(pki.ca))
    stranger = write_config(tmp_path / "c.toml", srv.url, tls_lines(pki.ca, client=pki.stranger))
    good, none, foreign = await asyncio.gather(
        cli("apply", config=with_cert), cli("plan", config=without), cli("plan", config=stranger)
    )
    assert good.code == 0, good.stderr
    assert none.code == 1
    assert none.stderr.startswith(f"broker error: cannot connect to {srv.url}")
    assert foreign.code == 1
    assert foreign.stderr.startswith(f"broker error: cannot connect to {srv.url}")


async def test_missing_client_certificate_is_named_in_the_error(
    tmp_path: Path, pki: Pki, start_server: StartServer
) -> None:
    """Without a client certificate, against a broker that requires one, the error
    says a client certificate is what is missing."""
    srv = start_server(NatsServer(tmp_path, extra_conf=tls_conf(pki.server, client_ca=pki.ca)))
    config = write_config(tmp_path / "a.toml", srv.url, tls_lines(pki.ca))
    run = await cli("plan", config=config)
    assert run.code == 1
    assert "client certificate" in run.stderr, run.stderr


async def test_commands_over_tls_print_nothing_on_stderr(
    tmp_path: Path, pki: Pki, start_server: StartServer
) -> None:
    """A successful `apply` over TLS prints its result on stdout and nothing on
    stderr (a cron job or unit would mail or log any stderr line)."""
    srv = start_server(NatsServer(tmp_path, extra_conf=tls_conf(pki.server)))
    config = write_config(tmp_path / "a.toml", srv.url, tls_lines(pki.ca))
    run = await cli("apply", config=config)
    assert run.code == 0
    assert run.stderr == ""


async def test_daemon_over_mutual_tls_with_a_token_reaches_ready(
    tmp_path: Path,
    pki: Pki,
    start_server: StartServer,
    daemons: list[DaemonProc | NotifiedDaemon],
) -> None:
    """The daemon connects with a client certificate and a systemd-credential token
    over verified TLS, creates everything and reports ready."""
    creds = new_creds()
    conf = tls_conf(pki.server, client_ca=pki.ca) + token_conf(creds.token)
    srv = start_server(NatsServer(tmp_path, extra_conf=conf))
    credentials = tmp_path / "credentials"
    secret_file(credentials / "nats-token", creds.token)
    (credentials / "nats-client.key").write_bytes(pki.client.key.read_bytes())
    lines = 'token_file = "$CREDENTIALS_DIRECTORY/nats-token"\n' + (
        f'[nats.tls]\nca_file = "{pki.ca.cert}"\ncert_file = "{pki.client.cert}"\n'
        'key_file = "$CREDENTIALS_DIRECTORY/nats-client.key"\n'
    )
    config = write_config(tmp_path / "watchdog.toml", srv.url, lines)
    daemon = DaemonProc(config, env={"CREDENTIALS_DIRECTORY": str(credentials)}).start()
    daemons.append(daemon)
    await daemon.wait_for(is_action("ready"), within=15)
    created = {line["stream"] for line in daemon.find(is_action("created"))}
    assert created == STREAMS
    async with admin(srv.url, token=creds.token, tls=_client_context(pki)) as nc:
        assert await stream_names(nc) >= STREAMS


def _client_context(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca.cert))
    context.load_cert_chain(str(pki.client.cert), str(pki.client.key))
    return context


def test_unusable_tls_files_are_config_errors(tmp_path: Path, pki: Pki) -> None:
    """A CA file that is not PEM, or a client certificate with another key, is a
    config error at load naming the key, not a connection that can never succeed."""
    url = "nats://127.0.0.1:4222"
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    path = write_config(tmp_path / "a.toml", url, tls_lines(Ca(garbage, garbage, tmp_path)))
    with pytest.raises(ConfigError) as caught:
        load(str(path))
    [problem] = caught.value.problems
    assert ": nats.tls.ca_file: not a usable CA bundle" in problem
    mismatched = Cert(cert=pki.client.cert, key=pki.stranger.key)
    path = write_config(tmp_path / "b.toml", url, tls_lines(pki.ca, client=mismatched))
    with pytest.raises(ConfigError) as caught:
        load(str(path))
    [problem] = caught.value.problems
    assert ": nats.tls.cert_file: certificate and key do not load" in problem


# --- least privilege ----------------------------------------------------------------------


async def test_least_privilege_user_runs_every_command(
    tmp_path: Path, start_server: StartServer
) -> None:
    """As a user with exactly the documented permissions (no delete, no purge),
    plan, check and apply create what is missing, put a drift back and recreate a
    deleted bucket; the broker denies the watchdog nothing."""
    creds = new_creds()
    srv = start_server(NatsServer(tmp_path, extra_conf=least_privilege_conf(creds)))
    pw = secret_file(tmp_path / "pw", creds.password)
    config = write_config(
        tmp_path / "watchdog.toml", srv.url, f'user = "{WATCHDOG_USER}"\npassword_file = "{pw}"'
    )
    async with (
        admin(srv.url, user="admin", password=creds.admin_password) as nc,
        audited(nc) as audit,
    ):
        planned, checked = await asyncio.gather(
            cli("plan", config=config), cli("check", config=config)
        )
        assert (planned.code, checked.code) == (2, 2), planned.stderr + checked.stdout
        assert "0/3 in sync; 3 create" in planned.stdout
        applied = await cli("apply", config=config)
        assert applied.code == 0, applied.stdout + applied.stderr
        assert await stream_names(nc) >= STREAMS

        await raw_update(nc, "ORDERS", max_bytes=2 * MIB)
        await nc.request("$JS.API.STREAM.DELETE.KV_settings", b"", timeout=5)
        planned, checked = await asyncio.gather(
            cli("plan", config=config), cli("check", config=config)
        )
        assert planned.code == 2
        assert "max_bytes: 2MiB -> 1MiB" in planned.stdout
        assert checked.code == 2
        assert "missing: kv:settings" in checked.stdout
        applied = await cli("apply", config=config)
        assert applied.code == 0, applied.stdout + applied.stderr
        assert "1 created, 1 updated" in applied.stdout
        planned, checked = await asyncio.gather(
            cli("plan", config=config), cli("check", config=config)
        )
        assert (planned.code, checked.code) == (0, 0), planned.stdout + checked.stdout
    assert audit.count("STREAM.CREATE") == 4, audit.verbs
    assert audit.count("STREAM.UPDATE") == 1, audit.verbs
    assert violations(srv) == []


async def test_least_privilege_daemon_creates_heals_and_updates(
    tmp_path: Path,
    start_server: StartServer,
    daemons: list[DaemonProc | NotifiedDaemon],
) -> None:
    """The daemon as the documented least-privilege user creates everything, heals
    a delete at once from the advisory, puts a drifted bucket back, creates a
    resource added by a reload; no request of it is denied, none destroys data."""
    creds = new_creds()
    srv = start_server(NatsServer(tmp_path, extra_conf=least_privilege_conf(creds)))
    pw = secret_file(tmp_path / "pw", creds.password)
    config = write_config(
        tmp_path / "watchdog.toml", srv.url, f'user = "{WATCHDOG_USER}"\npassword_file = "{pw}"'
    )
    async with (
        admin(srv.url, user="admin", password=creds.admin_password) as nc,
        audited(nc) as audit,
    ):
        daemon = DaemonProc(config).start()
        daemons.append(daemon)
        await daemon.wait_for(is_action("ready"), within=15)

        mark = daemon.mark()
        await nc.request("$JS.API.STREAM.DELETE.ORDERS", b"", timeout=5)
        await daemon.wait_for(
            is_action("created", stream="ORDERS", trigger="advisory"), after=mark, within=5
        )
        await raw_update(nc, "KV_settings", max_msgs_per_subject=5)
        await daemon.wait_for(
            is_action("updated", stream="KV_settings", trigger="advisory"), after=mark, within=5
        )
        with config.open("a") as fh:
            fh.write('\n[streams.AUDIT]\nsubjects = ["audit.>"]\nmax_bytes = "1MiB"\n')
        daemon.send(signal.SIGHUP)
        await daemon.wait_for(is_action("created", stream="AUDIT"), after=mark, within=5)
        assert await stream_names(nc) >= {*STREAMS, "AUDIT"}
    assert audit.count("STREAM.CREATE") >= len(STREAMS) + 2, audit.verbs  # it was seen at work
    assert violations(srv) == []
    assert daemon.raw == []


async def test_denied_update_names_the_subject_and_the_permission(
    tmp_path: Path, start_server: StartServer
) -> None:
    """As a user without $JS.API.STREAM.UPDATE.*, `apply` on a drifted stream fails
    with 'permission denied: publish to $JS.API.STREAM.UPDATE.ORDERS' and says to
    grant it in the publish permissions; the creates it may do still happen."""
    creds = new_creds()
    conf = least_privilege_conf(creds, drop=("$JS.API.STREAM.UPDATE.*",))
    srv = start_server(NatsServer(tmp_path, extra_conf=conf))
    async with admin(srv.url, user="admin", password=creds.admin_password) as nc:
        await raw_create(
            nc,
            {"name": "ORDERS", "subjects": ["orders.>"], "max_bytes": 2 * MIB, "storage": "file"},
        )
    pw = secret_file(tmp_path / "pw", creds.password)
    config = write_config(
        tmp_path / "watchdog.toml", srv.url, f'user = "{WATCHDOG_USER}"\npassword_file = "{pw}"'
    )
    run = await cli("apply", config=config)
    assert run.code == 1
    assert "2 created" in run.stdout
    assert (
        "permission denied: publish to $JS.API.STREAM.UPDATE.ORDERS (grant it in the user's "
        "publish permissions)" in run.stdout
    ), run.stdout


async def test_denied_inbox_names_the_subscribe_permission(
    tmp_path: Path, start_server: StartServer
) -> None:
    """As a user without subscribe rights on _INBOX.>, commands fail saying the
    replies' inbox needs a subscribe permission, not that the broker is silent."""
    creds = new_creds()
    srv = start_server(
        NatsServer(tmp_path, extra_conf=least_privilege_conf(creds, drop=("_INBOX.>",)))
    )
    pw = secret_file(tmp_path / "pw", creds.password)
    config = write_config(
        tmp_path / "watchdog.toml", srv.url, f'user = "{WATCHDOG_USER}"\npassword_file = "{pw}"'
    )
    run = await cli("plan", config=config)
    assert run.code == 1
    assert "permission denied: subscribe to _INBOX" in run.stderr, run.stderr


async def test_daemon_denied_create_warns_with_the_subject(
    tmp_path: Path,
    start_server: StartServer,
    daemons: list[DaemonProc | NotifiedDaemon],
) -> None:
    """The daemon as a user without $JS.API.STREAM.CREATE.* warns that publishing to
    $JS.API.STREAM.CREATE.ORDERS was denied and which permission to grant."""
    creds = new_creds()
    conf = least_privilege_conf(creds, drop=("$JS.API.STREAM.CREATE.*",))
    srv = start_server(NatsServer(tmp_path, extra_conf=conf))
    pw = secret_file(tmp_path / "pw", creds.password)
    config = write_config(
        tmp_path / "watchdog.toml", srv.url, f'user = "{WATCHDOG_USER}"\npassword_file = "{pw}"'
    )
    daemon = DaemonProc(config).start()
    daemons.append(daemon)

    def denied(line: dict[str, Any]) -> bool:
        return line.get("level") in ("warning", "error") and (
            "permission denied: publish to $JS.API.STREAM.CREATE.ORDERS (grant it in the "
            "user's publish permissions)" in str(line.get("message", ""))
        )

    await daemon.wait_for(denied, within=10)


async def test_daemon_denied_advisories_warns_with_the_subject(
    tmp_path: Path,
    start_server: StartServer,
    daemons: list[DaemonProc | NotifiedDaemon],
) -> None:
    """The daemon as a user without the advisory subscription still converges, and
    warns that subscribing to $JS.EVENT.ADVISORY.STREAM.*.* was denied."""
    creds = new_creds()
    conf = least_privilege_conf(creds, drop=("$JS.EVENT.ADVISORY.STREAM.*.*",))
    srv = start_server(NatsServer(tmp_path, extra_conf=conf))
    pw = secret_file(tmp_path / "pw", creds.password)
    config = write_config(
        tmp_path / "watchdog.toml", srv.url, f'user = "{WATCHDOG_USER}"\npassword_file = "{pw}"'
    )
    daemon = DaemonProc(config).start()
    daemons.append(daemon)
    await daemon.wait_for(is_action("ready"), within=15)

    def warned(line: dict[str, Any]) -> bool:
        message = str(line.get("message", ""))
        return (
            line.get("level") in ("warning", "error")
            and "$JS.EVENT.ADVISORY.STREAM.*.*" in message
            and "subscribe" in message
        )

    await daemon.wait_for(warned, within=10)


# --- JetStream domains --------------------------------------------------------------------


async def test_jetstream_domain_on_the_domains_own_server_needs_both_api_prefixes(
    tmp_path: Path, start_server: StartServer
) -> None:
    """On a broker that is itself in domain 'hub', jetstream_domain = "hub" works for
    a user granted the documented subjects under both $JS.hub.API and $JS.API (the
    server maps the first onto the second, then checks the mapped subject), and
    only under $JS.hub.API it is refused, on $JS.API.STREAM.LIST."""
    creds = new_creds()
    both = least_privilege_conf(creds, domain="hub", keep_plain=True)
    srv = start_server(
        NatsServer(tmp_path, name="both", jetstream_conf="domain: hub", extra_conf=both)
    )
    only = least_privilege_conf(creds, domain="hub")
    narrow = start_server(
        NatsServer(tmp_path, name="only", jetstream_conf="domain: hub", extra_conf=only)
    )
    pw = secret_file(tmp_path / "pw", creds.password)
    auth = f'user = "{WATCHDOG_USER}"\npassword_file = "{pw}"\njetstream_domain = "hub"'
    domain = write_config(tmp_path / "hub.toml", srv.url, auth)
    refused_config = write_config(tmp_path / "only.toml", narrow.url, auth)
    applied, refused = await asyncio.gather(
        cli("apply", config=domain), cli("plan", config=refused_config)
    )
    assert applied.code == 0, applied.stdout + applied.stderr
    assert "3 created" in applied.stdout
    assert refused.code == 1
    assert violations(srv) == []
    denied = violations(narrow)
    assert denied, "the mapped $JS.API request was not refused"
    assert all('Subject "$JS.API.STREAM.LIST"' in line for line in denied), denied
    async with admin(srv.url, user="admin", password=creds.admin_password) as nc:
        assert await stream_names(nc) >= STREAMS


async def test_without_a_domain_requests_stay_local_and_an_unknown_domain_is_named(
    tmp_path: Path, start_server: StartServer
) -> None:
    """Against a broker in domain 'hub', a config without jetstream_domain still
    works through the local $JS.API; a domain nobody serves is an error naming
    the subject it tried."""
    srv = start_server(NatsServer(tmp_path, jetstream_conf="domain: hub"))
    local = write_config(tmp_path / "local.toml", srv.url)
    nowhere = write_config(tmp_path / "spoke.toml", srv.url, 'jetstream_domain = "spoke"')
    applied, missing = await asyncio.gather(cli("apply", config=local), cli("plan", config=nowhere))
    assert applied.code == 0, applied.stderr
    assert "3 created" in applied.stdout
    assert missing.code == 1
    assert missing.stderr.strip() == (
        "broker error: no JetStream responds on $JS.spoke.API.STREAM.LIST "
        "(JetStream off, or wrong domain)"
    )


async def test_daemon_on_a_leafnode_keeps_the_hub_domain_streams(
    tmp_path: Path,
    start_server: StartServer,
    daemons: list[DaemonProc | NotifiedDaemon],
) -> None:
    """On a leafnode, as a user granted the documented subjects under $JS.hub.API
    only, the daemon with jetstream_domain = "hub" creates the streams in the
    hub's JetStream (none in the leaf's own) and heals a delete made on the hub
    from the advisory that crosses the leafnode; the leaf denies it nothing."""
    creds = new_creds()
    port = free_port()
    hub = start_server(
        NatsServer(
            tmp_path,
            name="hub",
            jetstream_conf="domain: hub",
            extra_conf=f"leafnodes {{ listen: 127.0.0.1:{port} }}",
        )
    )
    remote = f'leafnodes {{ remotes = [ {{ url: "nats-leaf://127.0.0.1:{port}" }} ] }}\n'
    leaf = start_server(
        NatsServer(
            tmp_path,
            name="leaf",
            jetstream_conf="domain: leaf",
            extra_conf=remote + least_privilege_conf(creds, domain="hub"),
        )
    )
    pw = secret_file(tmp_path / "pw", creds.password)
    auth = f'user = "{WATCHDOG_USER}"\npassword_file = "{pw}"\njetstream_domain = "hub"'
    config = write_config(tmp_path / "watchdog.toml", leaf.url, auth)
    as_admin = {"user": "admin", "password": creds.admin_password}
    async with admin(hub.url) as on_hub, admin(leaf.url, **as_admin) as on_leaf:
        deadline = time.monotonic() + 10
        while True:  # the leafnode connection comes up asynchronously
            try:
                await on_leaf.request("$JS.hub.API.INFO", b"", timeout=0.2)
                break
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                assert time.monotonic() < deadline, "leafnode never connected"
                await asyncio.sleep(0.05)
        daemon = DaemonProc(config).start()
        daemons.append(daemon)
        await daemon.wait_for(is_action("ready"), within=15)
        assert await stream_names(on_hub) >= STREAMS
        assert await stream_names(on_leaf) == set()

        mark = daemon.mark()
        await on_hub.request("$JS.API.STREAM.DELETE.ORDERS", b"", timeout=5)
        await daemon.wait_for(
            is_action("created", stream="ORDERS", trigger="advisory"), after=mark, within=5
        )
        assert "ORDERS" in await stream_names(on_hub)
        assert await stream_names(on_leaf) == set()
    assert violations(leaf) == []


# --- secrets never print ------------------------------------------------------------------

SITECUSTOMIZE = """\
import json, os
_path = os.environ.get("KWD_TEST_JOURNAL")
if _path:
    import systemd.journal as _journal
    _out = open(_path, "a", buffering=1)
    def _sendv(*fields):
        _out.write(json.dumps(list(fields)) + "\\n")
    _journal.sendv = _sendv
"""


def journal_entries(path: Path) -> list[dict[str, str]]:
    """The journal entries a daemon sent, field by field."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        fields: list[str] = json.loads(line)
        out.append({k: v for k, _, v in (f.partition("=") for f in fields)})
    return out


@dataclass
class LeakCase:
    """One credential, the right and a wrong config for it, and what to look for."""

    name: str
    right: Path
    daemon: Path  # the right credential, other resources: the daemon runs beside the commands
    wrong: Path
    env: dict[str, str]
    secrets: list[str]


def journal_shim(workdir: Path) -> Path:
    """A directory whose sitecustomize makes systemd.journal.sendv write the
    entries it is given to $KWD_TEST_JOURNAL instead of journald."""
    shim = workdir / "shim"
    shim.mkdir(parents=True)
    (shim / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return shim


async def _journal_daemon(
    case: LeakCase, workdir: Path, daemons: list[DaemonProc | NotifiedDaemon]
) -> str:
    """The right credential's daemon, logging to a captured journal: ready,
    reloaded, stopped. Returns every journal field and stderr byte."""
    shim = journal_shim(workdir)
    captured = workdir / "journal.jsonl"
    env = {**case.env, "PYTHONPATH": str(shim), "KWD_TEST_JOURNAL": str(captured)}
    daemon = NotifiedDaemon(case.daemon, workdir, log_format="journal", env=env).start()
    daemons.append(daemon)

    def entries_with(text: str) -> list[dict[str, str]]:
        return [e for e in journal_entries(captured) if text in e.get("MESSAGE", "")]

    await daemon.until("ready", lambda: entries_with("ready: "), within=15)
    daemon.send(signal.SIGHUP)
    await daemon.until("reloaded", lambda: entries_with("reloaded "), within=10)
    daemon.send(signal.SIGTERM)
    assert await daemon.wait_exit(within=10) == 0
    entries = journal_entries(captured)
    assert entries
    assert all(e["SYSLOG_IDENTIFIER"] == "kanade-watchdog" for e in entries)
    return json.dumps(entries) + daemon.stderr()


async def _wrong_json_daemon(case: LeakCase, daemons: list[DaemonProc | NotifiedDaemon]) -> str:
    """The wrong config's daemon in JSON: until it says it cannot connect."""
    daemon = DaemonProc(case.wrong, env=case.env).start()
    daemons.append(daemon)
    await daemon.wait_for(has_message("cannot connect yet"), within=10)
    daemon.close()
    return json.dumps(daemon.lines) + "\n".join(daemon.raw)


async def _commands(case: LeakCase) -> str:
    """The commands that talk to the broker, with the right config then the wrong one."""
    right = [
        await cli("plan", config=case.right, env=case.env),
        await cli("apply", "--json", "-v", config=case.right, env=case.env),
        await cli("check", config=case.right, env=case.env),
    ]
    wrong = await asyncio.gather(
        cli("apply", config=case.wrong, env=case.env),
        cli("check", config=case.wrong, env=case.env),
    )
    assert [r.code for r in right] == [2, 0, 0], [r.stdout + r.stderr for r in right]
    assert [r.code for r in wrong] == [1, 2], [r.stdout + r.stderr for r in wrong]
    return "\n".join(r.stdout + r.stderr for r in [*right, *wrong])


async def test_no_secret_ever_appears_in_output_logs_or_journal_fields(
    tmp_path: Path,
    start_server: StartServer,
    daemons: list[DaemonProc | NotifiedDaemon],
) -> None:
    """With a token, a password, an NKey seed and a creds file, right and wrong:
    plan, apply --json, check, the daemon's journal fields through start, reload
    and stop, its JSON log while refused, and the validate/run config errors for
    inline secrets in a readable file never contain any secret, whole or half."""
    creds = new_creds()
    operator = new_operator()
    stranger = new_operator()  # a user of an operator the broker does not trust
    # One broker per case: the cases run at once and each creates the same streams.
    token_srv = start_server(NatsServer(tmp_path, name="token", extra_conf=token_conf(creds.token)))
    pw_srv = start_server(NatsServer(tmp_path, name="password", extra_conf=users_conf(creds)))
    nkey_srv = start_server(NatsServer(tmp_path, name="nkey", extra_conf=users_conf(creds)))
    op_srv = start_server(
        NatsServer(tmp_path, name="op", extra_conf=operator.server_conf(tmp_path))
    )
    wrong_token, wrong_password, wrong_nkey = secret("bad-tok"), secret("bad-pw"), new_nkey()
    credentials = tmp_path / "credentials"
    secret_file(credentials / "nats-token", creds.token)
    secret_file(credentials / "nats-password", creds.password)
    secret_file(credentials / "nats-nkey", creds.nkey.seed)
    secret_file(credentials / "bad-nkey", wrong_nkey.seed)
    creds_file(credentials / "nats-creds", operator)
    creds_file(credentials / "bad-creds", stranger)
    env = {"CREDENTIALS_DIRECTORY": str(credentials)}
    user = f'user = "{WATCHDOG_USER}"\n'

    def case(name: str, url: str, right: str, wrong: str, values: list[str]) -> LeakCase:
        return LeakCase(
            name,
            right=write_config(tmp_path / f"{name}.toml", url, right),
            daemon=write_config(tmp_path / f"{name}-daemon.toml", url, right, resources=WATCHED),
            wrong=write_config(tmp_path / f"{name}-wrong.toml", url, wrong),
            env=env,
            secrets=values,
        )

    cases = [
        case(
            "token",
            token_srv.url,
            'token_file = "$CREDENTIALS_DIRECTORY/nats-token"',
            f'token = "{wrong_token}"',
            [creds.token, wrong_token],
        ),
        case(
            "password",
            pw_srv.url,
            f'{user}password = "{creds.password}"',
            f'{user}password = "{wrong_password}"',
            [creds.password, wrong_password],
        ),
        case(
            "nkey",
            nkey_srv.url,
            'nkey_seed_file = "$CREDENTIALS_DIRECTORY/nats-nkey"',
            'nkey_seed_file = "$CREDENTIALS_DIRECTORY/bad-nkey"',
            [creds.nkey.seed, wrong_nkey.seed],
        ),
        case(
            "creds",
            op_srv.url,
            'creds_file = "$CREDENTIALS_DIRECTORY/nats-creds"',
            'creds_file = "$CREDENTIALS_DIRECTORY/bad-creds"',
            [operator.user.seed, stranger.user.seed],
        ),
    ]
    # Inline secrets in a file others can read: refused by validate and by run.
    readable = [
        write_config(
            tmp_path / "loose-token.toml", token_srv.url, f'token = "{creds.token}"', mode=0o644
        ),
        write_config(
            tmp_path / "loose-pw.toml",
            pw_srv.url,
            f'{user}password = "{creds.password}"',
            mode=0o640,
        ),
    ]

    async def refused(command: str, path: Path) -> str:
        run = await cli(command, config=path)
        assert run.code == 78, run.stdout + run.stderr
        assert "an inline secret needs a config file only its owner" in run.stderr
        return run.stdout + run.stderr

    outputs = await asyncio.gather(
        *(_commands(case) for case in cases),
        *(_journal_daemon(case, tmp_path / f"journal-{case.name}", daemons) for case in cases),
        *(_wrong_json_daemon(case, daemons) for case in cases),
        refused("validate", readable[0]),
        refused("run", readable[1]),
    )
    everything = "\n".join(outputs)
    assert "authorization refused" in everything  # the wrong runs did run
    all_secrets = [s for case in cases for s in case.secrets]
    for value in all_secrets:
        for part in (value, value[: len(value) // 2], value[len(value) // 2 :]):
            assert part not in everything, f"a secret ({value[:4]}...) leaked"
    assert everything.count("JETSTREAM OK - 3/3 in sync") == len(cases)


def url_secrets() -> dict[str, tuple[str, list[str]]]:
    """Server URLs with credentials, by form: (the URL's userinfo, its secrets).
    A password holding '/' ends a URL's authority early for a parser, so the
    rest would pass for a path."""
    token, password, slashed = secret("tok"), secret("pw"), secret("pw") + "/in" + secret("s")
    return {
        "token": (token, [token]),
        "user and password": (f"admin:{password}", [password]),
        "password with a slash": (f"admin:{slashed}", [slashed]),
    }


def leaked(text: str, values: list[str]) -> list[str]:
    """The secrets (by their first 4 characters) that appear in `text`, whole or half."""
    return [
        v[:4]
        for v in values
        if any(part in text for part in (v, v[: len(v) // 2], v[len(v) // 2 :]))
    ]


async def test_credentials_in_a_server_url_are_refused_whatever_the_file_mode(
    tmp_path: Path,
) -> None:
    """A server URL carrying a token, a password, or a password holding '/' is
    refused by `validate` (exit 78) with one line naming nats.servers, the same
    whether the config file is private (0600, where an inline token would be
    accepted) or readable by others, and the line holds no part of the secret."""
    port = free_port()
    runs: dict[tuple[str, int], Any] = {}
    secrets_seen: list[str] = []
    for form, (userinfo, values) in url_secrets().items():
        secrets_seen += values
        for mode in (0o600, 0o644):
            path = write_config(
                tmp_path / f"{form.replace(' ', '-')}-{mode:o}.toml",
                f"nats://{userinfo}@127.0.0.1:{port}",
                mode=mode,
            )
            runs[form, mode] = (path, cli("validate", config=path))
    done = await asyncio.gather(*(job for _, job in runs.values()))
    problems: dict[tuple[str, int], str] = {}
    for (key, (path, _)), run in zip(runs.items(), done, strict=True):
        assert run.code == 78, (key, run.stdout, run.stderr)
        [line] = [line for line in run.stderr.splitlines() if line.strip()]
        assert str(path) in line, line
        problems[key] = line.split(f"{path}: ", 1)[1]
        assert leaked(run.stdout + run.stderr, secrets_seen) == [], key
    expected = (
        "nats.servers: credentials in a server URL are not allowed "
        "(use token_file, or user and password_file), got <hidden>"
    )
    assert set(problems.values()) == {expected}, problems


async def test_credentials_in_a_server_url_never_reach_the_broker_nor_print(
    tmp_path: Path,
    start_server: StartServer,
    daemons: list[DaemonProc | NotifiedDaemon],
) -> None:
    """Against a broker that would accept the token a server URL carries (from
    a private config file), the daemon and every command that talks to the
    broker refuse the config (exit 78; `check` says UNKNOWN, 3) before any
    connection: the broker counts no new client until the test's own admin,
    and no output holds any part of the token."""
    token = secret("tok")
    srv = start_server(NatsServer(tmp_path, extra_conf=token_conf(token), http_port=free_port()))
    config = write_config(tmp_path / "watchdog.toml", f"nats://{token}@127.0.0.1:{srv.port}")

    def connections() -> int:
        """Connections the broker ever accepted (its readiness probe included)."""
        varz = srv.monitor("/varz")
        assert varz is not None, "the broker's monitoring port does not answer"
        return int(varz["total_connections"])

    before = connections()
    daemon = DaemonProc(config).start()
    daemons.append(daemon)
    commands = ("validate", "plan", "apply", "check")
    runs = await asyncio.gather(*(cli(command, config=config) for command in commands))
    assert await daemon.wait_exit(within=15) == 78, daemon.tail()
    assert [run.code for run in runs] == [78, 78, 78, 3], [r.stdout + r.stderr for r in runs]
    seen = json.dumps(daemon.lines) + "\n".join(daemon.raw)
    seen += "".join(run.stdout + run.stderr for run in runs)
    assert "credentials in a server URL are not allowed" in seen
    assert leaked(seen, [token]) == []
    assert connections() == before
    # The count is live: the token in the URL is a good one, and a client using
    # it properly is counted.
    async with admin(srv.url, token=token) as nc:
        await nc.flush()
        assert connections() == before + 1
