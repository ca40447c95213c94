"""The validated settings of one config file: connection, daemon, resources.

Pure data, frozen. `config` builds a `Config` from the TOML file; secrets
are `Secret`s from the moment they are read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kanade_watchdog.model.consumers import Consumer
from kanade_watchdog.model.resources import Resource
from kanade_watchdog.model.secret import Secret

DEFAULT_PATH = "/etc/kanade/watchdog.toml"
ENV_PATH = "KANADE_WATCHDOG_CONFIG"


@dataclass(frozen=True)
class TlsSettings:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None  # checked against the certificate; default: URL host
    verify: bool = True


@dataclass(frozen=True)
class NatsSettings:
    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    name: str = "kanade-watchdog"
    connect_timeout: float = 2.0
    request_timeout: float = 2.0
    reconnect_wait: float = 0.25
    jetstream_domain: str | None = None
    # Credentials: at most one way to authenticate. Secrets never print.
    token: Secret | None = None
    token_file: str | None = None
    user: str | None = None
    password: Secret | None = None
    password_file: str | None = None
    nkey_seed_file: str | None = None
    creds_file: str | None = None
    tls: TlsSettings | None = None


@dataclass(frozen=True)
class WatchdogSettings:
    resync_interval: float = 30.0
    resync_jitter: float = 3.0
    backoff_initial: float = 0.01
    backoff_max: float = 300.0
    permanent_retry: float = 300.0
    advisories: bool = True
    stop_timeout: float = 20.0
    pass_deadline: float = 30.0
    id: str | None = None  # the writer identity stamped on writes; default: writer_id()
    force_spec: bool = False


@dataclass(frozen=True)
class HttpSettings:
    """`[http]`: the opt-in endpoint (/metrics, /healthz, /readyz, /status).
    Without `listen` there is no endpoint at all."""

    host: str | None = None  # None: no endpoint
    port: int = 0

    @property
    def where(self) -> str:
        host = self.host or ""
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


@dataclass(frozen=True)
class Config:
    path: str
    spec_version: int = 1
    writer: str = ""  # the identity stamped on every write (`[watchdog] id` or derived)
    nats: NatsSettings = field(default_factory=NatsSettings)
    watchdog: WatchdogSettings = field(default_factory=WatchdogSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    resources: tuple[Resource, ...] = ()
    consumers: tuple[Consumer, ...] = ()  # [consumers.<STREAM>.<DURABLE>]
    # Globs of broker streams (or bucket names) that plan and check do not
    # report as undeclared: the ones another tool is expected to own.
    ignore: tuple[str, ...] = ()

    def by_stream(self) -> dict[str, Resource]:
        return {r.stream: r for r in self.resources}
