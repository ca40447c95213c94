"""Load and validate the TOML declaration, all of it, before any network traffic.

Pure: reads one file, returns a frozen `Config` or raises `ConfigError` with
one line per problem (`<file>: <key path>: <what is wrong>, got <value>`).
Every key is known: a typo is an error, never silently ignored.
`desired` turns the resources into broker configs; `cli` and `daemon` call
`load()`; nothing here imports the NATS client, systemd or the scheduler.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from kanade_watchdog.config import consumers as consumerfields
from kanade_watchdog.config import fieldchecks, streamfields, values
from kanade_watchdog.config import files as configfile
from kanade_watchdog.config.checks import cross_checks, declared_subjects
from kanade_watchdog.config.files import read_config, resolve_secrets
from kanade_watchdog.config.problems import Parser, Problems, unknown_key
from kanade_watchdog.config.problems import key as _key
from kanade_watchdog.config.values import age as _age
from kanade_watchdog.config.values import boolean as _bool
from kanade_watchdog.config.values import count as _count
from kanade_watchdog.config.values import description as _description
from kanade_watchdog.config.values import domain as _domain
from kanade_watchdog.config.values import enum as _enum
from kanade_watchdog.config.values import file_path as _path
from kanade_watchdog.config.values import int_range as _int_range
from kanade_watchdog.config.values import metadata as _metadata
from kanade_watchdog.config.values import placement as _placement
from kanade_watchdog.config.values import positive_seconds as _positive_seconds
from kanade_watchdog.config.values import seconds as _seconds
from kanade_watchdog.config.values import secret as _secret
from kanade_watchdog.config.values import servers as _servers
from kanade_watchdog.config.values import size as _size
from kanade_watchdog.config.values import subjects as _subjects
from kanade_watchdog.config.values import table as _parse_table
from kanade_watchdog.config.values import text as _text
from kanade_watchdog.config.values import window as _window
from kanade_watchdog.config.writer import writer, writer_id
from kanade_watchdog.model.errors import ConfigError
from kanade_watchdog.model.resources import (
    SECTION,
    STREAM_PREFIX,
    Kind,
    Resource,
)
from kanade_watchdog.model.settings import (
    Config,
    HttpSettings,
    NatsSettings,
    TlsSettings,
    WatchdogSettings,
)
from kanade_watchdog.model.subjects import bucket_name_problem, stream_name_problem
from kanade_watchdog.model.units import format_duration_ns

ENV_TOKEN = configfile.ENV_TOKEN  # where callers have always found these two
MAX_FILE_BYTES = configfile.MAX_FILE_BYTES
MAX_DESCRIPTION_BYTES = values.MAX_DESCRIPTION_BYTES
INT32_MAX = 2**31 - 1
MAX_REPLICAS = 5


# --- the schema: which keys each table takes, parsed by `values` --------------------

_STORAGE = _enum("file", "memory")
_COMPRESSION = _enum("none", "s2")
_REPLICAS = _int_range(1, MAX_REPLICAS)

# config key -> parser, per kind. `desired.WIRE_FIELD` maps keys to broker fields.
FIELDS: dict[Kind, dict[str, Parser]] = {
    Kind.STREAM: {
        "subjects": _subjects,
        "retention": _enum("limits", "interest", "workqueue"),
        "storage": _STORAGE,
        "max_age": _age,
        "max_bytes": _size(),
        "max_msgs": _count,
        "max_msgs_per_subject": _count,
        "max_msg_size": _size(INT32_MAX),
        "discard": _enum("old", "new"),
        "num_replicas": _REPLICAS,
        "duplicate_window": _window,
        "description": _description,
        "compression": _COMPRESSION,
        "placement": _placement,
        "allow_direct": _bool,
        "deny_delete": _bool,
        "deny_purge": _bool,
        "allow_rollup_hdrs": _bool,
        "metadata": _metadata,
    },
    Kind.KV: {
        "history": _int_range(1, 64),
        "ttl": _age,
        "max_bytes": _size(),
        "max_value_size": _size(INT32_MAX),
        "storage": _STORAGE,
        "replicas": _REPLICAS,
        "compression": _COMPRESSION,
        "placement": _placement,
        "description": _description,
    },
    Kind.OBJECT_STORE: {
        "ttl": _age,
        "max_bytes": _size(),
        "storage": _STORAGE,
        "replicas": _REPLICAS,
        "compression": _COMPRESSION,
        "placement": _placement,
        "description": _description,
    },
}
for _kind, _parsers in streamfields.PARSERS.items():
    FIELDS[Kind(_kind)].update(_parsers)
REQUIRED: dict[Kind, tuple[str, ...]] = {
    Kind.STREAM: ("subjects",),
    Kind.KV: (),
    Kind.OBJECT_STORE: (),
}


def _tls(value: Any) -> TlsSettings:
    if not isinstance(value, dict):
        raise ValueError("must be a table (ca_file, cert_file, key_file, server_name, verify)")
    known = {
        "ca_file": _path,
        "cert_file": _path,
        "key_file": _path,
        "server_name": _text(256),
        "verify": _bool,
    }
    parsed = _parse_table(value, known)
    if ("cert_file" in parsed) != ("key_file" in parsed):
        raise ValueError("cert_file and key_file go together (client certificate)")
    return TlsSettings(**parsed)


def _globs(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError('must be a list of name patterns, e.g. ["TMP_*", "KV_cache_*"]')
    return tuple(value)


# The [nats] keys that may hold a secret inline (refused unless the file is private).
SECRET_KEYS = frozenset({"token", "password"})
_NATS_KEYS: dict[str, Parser] = {
    "servers": _servers,
    "name": _text(256),
    "connect_timeout": _positive_seconds,
    "request_timeout": _positive_seconds,
    "reconnect_wait": _positive_seconds,
    "jetstream_domain": _domain,
    "token": _secret,
    "token_file": _path,
    "user": _text(256),
    "password": _secret,
    "password_file": _path,
    "nkey_seed_file": _path,
    "creds_file": _path,
    "tls": _tls,
}
# The shipped unit (packaging/systemd/kanade-watchdog.service) SIGKILLs the
# daemon TimeoutStopSec after SIGTERM. stop_timeout bounds the pass in flight
# and the tasks; after it the daemon still closes its connection (up to 2 s)
# and the interpreter exits. The margin keeps all of that inside the unit's
# limit, so a stop is never a kill that cuts a write short.
UNIT_TIMEOUT_STOP_SEC = 30.0
STOP_MARGIN = 5.0
MAX_STOP_TIMEOUT = UNIT_TIMEOUT_STOP_SEC - STOP_MARGIN


def _stop_timeout(value: Any) -> float:
    s = _positive_seconds(value)
    if s > MAX_STOP_TIMEOUT:
        raise ValueError(
            f"must be at most {MAX_STOP_TIMEOUT:g}s, to stop cleanly within the shipped "
            f"unit's TimeoutStopSec={UNIT_TIMEOUT_STOP_SEC:g}s ({STOP_MARGIN:g}s are kept "
            "for closing the connection and exiting)"
        )
    return s


# Ways to authenticate; one at most.
_AUTH_METHODS = {
    "token": ("token", "token_file"),
    "user and password": ("user", "password", "password_file"),
    "nkey": ("nkey_seed_file",),
    "credentials file": ("creds_file",),
}
_WATCHDOG_KEYS: dict[str, Parser] = {
    "resync_interval": _positive_seconds,
    "resync_jitter": _seconds,
    "backoff_initial": _positive_seconds,
    "backoff_max": _positive_seconds,
    "permanent_retry": _positive_seconds,
    "advisories": _bool,
    "stop_timeout": _stop_timeout,
    "pass_deadline": _positive_seconds,
    "id": writer,
    "force_spec": _bool,
}
_HTTP_KEYS: dict[str, Parser] = {"listen": values.parse_listen}
_TOP_KEYS = ("spec_version", "ignore", "nats", "watchdog", "http", *SECTION.values(), "consumers")
MAX_SPEC_VERSION = 2**31 - 1


def _table(problems: Problems, key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        problems.bad(key, "must be a table", value)
        return {}
    return value


def _settings(
    problems: Problems, section: str, raw: Any, parsers: dict[str, Parser]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in _table(problems, section, raw).items():
        parser = parsers.get(key)
        if parser is None:
            problems.add(f"{section}.{_key(key)}", unknown_key(key, parsers), kind=f"{section}.*")
            continue
        parsed = problems.parse(f"{section}.{key}", parser, value)
        if parsed is not None:
            out[key] = parsed
    return out


def _resource(problems: Problems, kind: Kind, name: str, raw: Any) -> Resource | None:
    """The resource with the fields that parsed, for the cross checks, even when
    others did not (they are reported); None when even its name is unusable."""
    section = SECTION[kind]
    where = f"{section}.{_key(name)}"
    problem = stream_name_problem(name) if kind is Kind.STREAM else bucket_name_problem(name)
    if problem:
        problems.bad(where, f"name {problem}", name, kind=f"{section}.*")
        return None
    if not isinstance(raw, dict):
        problems.bad(where, "must be a table", raw, kind=f"{section}.*")
        return None
    parsers = FIELDS[kind]
    declared: dict[str, Any] = {}
    protect = False
    for key, value in raw.items():
        if key == "protect":
            protect = bool(
                problems.parse(f"{where}.protect", _bool, value, kind=f"{section}.*.protect")
            )
            continue
        parser = parsers.get(key)
        if parser is None:
            problems.add(
                f"{where}.{_key(key)}",
                unknown_key(key, [*parsers, "protect"]),
                kind=f"{section}.*.*",
            )
            continue
        parsed = problems.parse(f"{where}.{key}", parser, value, kind=f"{section}.*.{key}")
        if parsed is not None:
            declared[key] = parsed
    for key in REQUIRED[kind]:
        # A mirror has no subjects, and a stream fed by sources needs none.
        if key not in raw and not (key == "subjects" and ("mirror" in raw or "sources" in raw)):
            problems.add(f"{where}.{key}", "is required", kind=f"{section}.*.{key}")
    if declared.get("allow_rollup_hdrs") and declared.get("deny_purge"):
        problems.bad(
            f"{where}.allow_rollup_hdrs",
            "a roll-up purges older messages, which deny_purge = true forbids "
            "(the broker refuses the two together)",
            raw["allow_rollup_hdrs"],
            kind=f"{section}.*.allow_rollup_hdrs",
        )
    window, age = declared.get("duplicate_window"), declared.get("max_age")
    if window and age and window > age:
        problems.bad(
            f"{where}.duplicate_window",
            f"must not be longer than max_age ({format_duration_ns(age)})",
            raw["duplicate_window"],
            kind=f"{section}.*.duplicate_window",
        )
    for key, reason in fieldchecks.check(STREAM_PREFIX[kind] + name, declared, raw):
        if key in raw:
            problems.bad(f"{where}.{key}", reason, raw[key], kind=f"{section}.*.{key}")
        else:
            problems.add(f"{where}.{key}", reason, kind=f"{section}.*.{key}")
    declared = streamfields.bind(kind, name, declared)
    return Resource(kind=kind, name=name, declared=declared, protect=protect)


def _auth_checks(problems: Problems, nats: dict[str, Any]) -> None:
    used = [m for m, keys in _AUTH_METHODS.items() if any(k in nats for k in keys)]
    if len(used) > 1:
        problems.add("nats", f"choose one way to authenticate, got {' and '.join(used)}")
    for one, other in (("token", "token_file"), ("password", "password_file")):
        if one in nats and other in nats:
            problems.add(f"nats.{one}", f"set {one} or {other}, not both")
    has_password = "password" in nats or "password_file" in nats
    if ("user" in nats) != has_password:
        problems.add("nats.user", "user and password (or password_file) go together")


def parse(document: Mapping[str, Any], path: str, *, require_resources: bool = True) -> Config:
    """Validate an already-decoded TOML document. `export` reads files that
    declare nothing yet (`require_resources=False`)."""
    problems = Problems(path)
    for key in document:
        if key not in _TOP_KEYS:
            problems.add(_key(key), unknown_key(key, _TOP_KEYS), kind="*")
    spec_version = problems.parse(
        "spec_version", _int_range(1, MAX_SPEC_VERSION), document.get("spec_version", 1)
    )
    ignore = problems.parse("ignore", _globs, document.get("ignore", []))
    nats = _settings(problems, "nats", document.get("nats", {}), _NATS_KEYS)
    _auth_checks(problems, nats)
    watchdog = _settings(problems, "watchdog", document.get("watchdog", {}), _WATCHDOG_KEYS)
    http = _settings(problems, "http", document.get("http", {}), _HTTP_KEYS)
    resources: list[Resource] = []
    for kind, section in SECTION.items():
        for name, raw in _table(problems, section, document.get(section, {})).items():
            res = _resource(problems, kind, name, raw)
            if res is not None:
                resources.append(res)
    cross_checks(problems, resources)
    consumers = consumerfields.parse(
        problems,
        document.get("consumers"),
        {r.stream: declared_subjects(r) for r in resources},
    )
    if require_resources and not resources and not consumers and not problems.found:
        problems.add(
            "streams",
            "no resources declared (need [streams.*], [kv_buckets.*] or [object_stores.*])",
        )
    if problems.found:
        raise ConfigError(problems.lines)
    settings = WatchdogSettings(**watchdog)
    writer = settings.id or writer_id(path)
    return Config(
        path=path,
        spec_version=spec_version,
        writer=writer,
        ignore=ignore,
        nats=NatsSettings(**nats),
        watchdog=settings,
        http=HttpSettings(*http["listen"]) if "listen" in http else HttpSettings(),
        resources=tuple(
            replace(r, spec_version=spec_version, writer=writer, force_spec=settings.force_spec)
            for r in resources
        ),
        consumers=tuple(
            replace(c, spec_version=spec_version, writer=writer, force_spec=settings.force_spec)
            for c in consumers
        ),
    )


def load(path: str, *, require_resources: bool = True) -> Config:
    """Read and validate `path`. Every failure is a one-line `ConfigError`."""
    raw, mode = read_config(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None
    if not text.strip():
        raise ConfigError([f"{path}: file is empty"])
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax: {exc}"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: TOML syntax: nested too deeply"]) from None
    except ValueError as exc:  # an integer beyond Python's 4300-digit limit
        raise ConfigError([f"{path}: TOML value: {exc}"]) from None
    return resolve_secrets(parse(document, path, require_resources=require_resources), mode)
