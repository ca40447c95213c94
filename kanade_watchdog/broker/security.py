"""Credentials and TLS for the NATS connection, from validated settings.

The only module that calls `Secret.reveal()`. nats-py reads NKey seeds and
credentials files itself; TLS becomes an `ssl.SSLContext` that verifies the
server's certificate and name unless the config says otherwise.
"""

from __future__ import annotations

import ssl
from typing import Any

from kanade_watchdog.model.settings import NatsSettings, TlsSettings


def tls_context(tls: TlsSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    if tls.cert_file and tls.key_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def auth_options(settings: NatsSettings) -> dict[str, Any]:
    """Keyword arguments for nats.connect()."""
    options: dict[str, Any] = {}
    if settings.token is not None:
        options["token"] = settings.token.reveal()
    if settings.user is not None and settings.password is not None:
        options["user"] = settings.user
        options["password"] = settings.password.reveal()
    if settings.nkey_seed_file:
        options["nkeys_seed"] = settings.nkey_seed_file
    if settings.creds_file:
        options["user_credentials"] = settings.creds_file
    if settings.tls is not None:
        options["tls"] = tls_context(settings.tls)
        if settings.tls.server_name:
            options["tls_hostname"] = settings.tls.server_name
    return options
