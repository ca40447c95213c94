"""Reading the config file and the secret files it names, without ever blocking.

Only regular files are read. A FIFO would block `open()` until a writer
comes, and with it `validate`, a start or a reload; /dev/zero never ends. So
the kind is checked before opening, and the open itself is non-blocking, in
case the path is swapped for a FIFO in between. Used by `config.load`, which
validates what is read here; pure apart from reading files and the
environment.
"""

from __future__ import annotations

import os
import re
import ssl
import stat
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from kanade_watchdog.config.problems import Problems
from kanade_watchdog.model.errors import ConfigError
from kanade_watchdog.model.secret import Secret

if TYPE_CHECKING:
    from kanade_watchdog.model.settings import Config, TlsSettings

MAX_FILE_BYTES = 4 * 1024 * 1024  # the kanade set is ~6 KiB; 25,000 resources fit
MAX_SECRET_BYTES = 64 * 1024
ENV_TOKEN = "KANADE_NATS_TOKEN"
_CREDENTIALS_VAR = re.compile(r"\$\{?CREDENTIALS_DIRECTORY\}?")

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class Unreadable(Exception):
    """Why a file cannot be read, as the text of one problem line."""


def _kind_problem(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    what = next((name for test, name in _KINDS if test(mode)), "not a regular file either")
    return f"is {what}, not a regular file"


def read_regular(path: str, limit: int) -> tuple[bytes, int]:
    """The bytes and mode of the regular file `path`, at most `limit` bytes.
    Raises `Unreadable` for anything else: missing, not allowed, not regular,
    too large."""
    try:
        st = os.stat(path)
        problem = _kind_problem(st.st_mode)
        if problem:
            raise Unreadable(problem)
        if st.st_size > limit:
            raise Unreadable(f"file is {st.st_size} bytes, over the {limit} limit")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            problem = _kind_problem(st.st_mode)
            if problem:
                raise Unreadable(problem)
            chunks: list[bytes] = []
            size = 0
            while size <= limit:
                chunk = os.read(fd, limit + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise Unreadable("no such file") from None
    except PermissionError:
        raise Unreadable("permission denied") from None
    except OSError as exc:
        raise Unreadable(f"cannot read: {exc.strerror or exc}") from None
    if size > limit:  # it grew while being read
        raise Unreadable(f"file is over the {limit} byte limit")
    return b"".join(chunks), st.st_mode


def read_config(path: str) -> tuple[bytes, int]:
    """The config file's bytes and mode, or a one-line `ConfigError`."""
    try:
        return read_regular(path, MAX_FILE_BYTES)
    except Unreadable as exc:
        raise ConfigError([f"{path}: {exc}"]) from None


def _expand(path: str, key: str, problems: Problems) -> str:
    """Only $CREDENTIALS_DIRECTORY is expanded: that is where systemd's
    LoadCredential= puts the unit's secrets."""
    if not _CREDENTIALS_VAR.search(path):
        return path
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        problems.bad(
            key,
            "refers to $CREDENTIALS_DIRECTORY, which is not set (give the unit LoadCredential=)",
            path,
        )
        return ""  # reported; the callers skip an empty path
    return _CREDENTIALS_VAR.sub(lambda _m: directory, path)


def _readable(path: str, key: str, problems: Problems) -> bool:
    """A file the client library opens later: it must be a readable regular file now."""
    if not path:  # an unexpandable path, already reported
        return False
    try:
        problem = _kind_problem(os.stat(path).st_mode)
    except FileNotFoundError:
        problem = "no such file"
    except OSError as exc:
        problem = f"cannot read: {exc.strerror or exc}"
    if problem is None and not os.access(path, os.R_OK):
        problem = "permission denied"
    if problem:
        problems.bad(key, problem, path)
        return False
    return True


def _read_secret(path: str, key: str, problems: Problems) -> Secret | None:
    if not path:  # an unexpandable path, already reported
        return None
    try:
        raw, _ = read_regular(path, MAX_SECRET_BYTES)
    except Unreadable as exc:
        problems.bad(key, str(exc), path)
        return None
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        text = ""
    if not text:
        problems.bad(key, "must hold one secret as UTF-8 text", path)
        return None
    return Secret(text)


def _check_tls_files(tls: TlsSettings, problems: Problems) -> None:
    """Load the CA and key pair once now, so a bad PEM is a config error at
    start or reload instead of a connection that can never succeed."""
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
    except (ssl.SSLError, OSError) as exc:
        problems.bad("nats.tls.ca_file", f"not a usable CA bundle ({exc})", tls.ca_file)
        return
    if tls.cert_file and tls.key_file:
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        except (ssl.SSLError, OSError) as exc:
            problems.bad(
                "nats.tls.cert_file", f"certificate and key do not load ({exc})", tls.cert_file
            )


def resolve_secrets(config: Config, mode: int) -> Config:
    """Read secret files, check inline secrets are private, take the token from
    the environment when the file names no way to authenticate."""
    problems = Problems(config.path)
    nats = config.nats
    changes: dict[str, Any] = {}
    for key in ("token", "password"):
        if getattr(nats, key) is not None and mode & 0o077:
            problems.add(
                f"nats.{key}",
                f"an inline secret needs a config file only its owner can read (mode "
                f"{mode & 0o777:04o}); chmod 600 it or use {key}_file",
            )
    for key, target in (("token_file", "token"), ("password_file", "password")):
        path = getattr(nats, key)
        if path is not None:
            changes[target] = _read_secret(
                _expand(path, f"nats.{key}", problems), f"nats.{key}", problems
            )
    for key in ("nkey_seed_file", "creds_file"):
        path = getattr(nats, key)
        if path is not None:
            changes[key] = _expand(path, f"nats.{key}", problems)
            _readable(changes[key], f"nats.{key}", problems)
    if nats.tls is not None:
        tls: dict[str, Any] = {}
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(nats.tls, key)
            if path is not None:
                tls[key] = _expand(path, f"nats.tls.{key}", problems)
                _readable(tls[key], f"nats.tls.{key}", problems)
        changes["tls"] = replace(nats.tls, **tls)
        if not problems.found:
            _check_tls_files(changes["tls"], problems)
    no_auth = not any(
        (nats.token, nats.token_file, nats.user, nats.nkey_seed_file, nats.creds_file)
    )
    if no_auth and os.environ.get(ENV_TOKEN):
        changes["token"] = Secret(os.environ[ENV_TOKEN])
    if problems.found:
        raise ConfigError(problems.lines)
    return replace(config, nats=replace(nats, **changes)) if changes else config
