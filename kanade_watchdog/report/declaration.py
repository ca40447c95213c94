"""An export as a TOML declaration (tomlkit), or as additions to an existing file.

Pure, no I/O. `render` writes a whole declaration: a header, `spec_version`
when the broker's resources carry a higher one, the `[nats]` section of the
connection used (file paths only, never a secret), then one table per
resource with comments on what the broker holds and what was left out.
`merge` keeps a file's text byte for byte and appends only the resources it
does not declare. `export` builds the entries; `export_cmd` does the I/O.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import tomlkit
from tomlkit.items import Table

from kanade_watchdog.core.export import Entry, Export
from kanade_watchdog.model.resources import SECTION, STREAM_PREFIX
from kanade_watchdog.model.settings import NatsSettings
from kanade_watchdog.model.units import NS_PER_SECOND, format_duration_ns

_DEFAULT_NATS = NatsSettings()


def _line(text: str) -> str:
    """A comment stays one line whatever a name or value holds."""
    return "".join(ch if ch.isprintable() else " " for ch in text)


def _comment(text: str) -> Any:
    return tomlkit.comment(_line(text))


def _seconds(value: float) -> str:
    return format_duration_ns(round(value * NS_PER_SECOND))


def nats_table(settings: NatsSettings) -> Table:
    """The connection settings as written in a config file: what was used,
    with paths to credential files but never a token or password."""
    table = tomlkit.table()
    table.add("servers", list(settings.servers))
    table.add("name", settings.name)
    for key in ("connect_timeout", "request_timeout", "reconnect_wait"):
        value = getattr(settings, key)
        if value != getattr(_DEFAULT_NATS, key):
            table.add(key, _seconds(value))
    if settings.jetstream_domain:
        table.add("jetstream_domain", settings.jetstream_domain)
    if settings.token_file:
        table.add("token_file", settings.token_file)
    elif settings.token is not None:
        table.add(
            _comment(
                "a token was used (inline or from $KANADE_NATS_TOKEN); it is not written "
                "here: set token_file"
            )
        )
    if settings.user is not None:
        table.add("user", settings.user)
        if settings.password_file:
            table.add("password_file", settings.password_file)
        elif settings.password is not None:
            table.add(
                _comment("an inline password was used; it is not written here: set password_file")
            )
    for key in ("nkey_seed_file", "creds_file"):
        path = getattr(settings, key)
        if path:
            table.add(key, path)
    tls = settings.tls
    if tls is not None:
        sub = tomlkit.table()
        for key in ("ca_file", "cert_file", "key_file", "server_name"):
            value = getattr(tls, key)
            if value:
                sub.add(key, value)
        if not tls.verify:
            sub.add("verify", False)
        table.add("tls", sub)
    return table


def _value(value: Any) -> Any:
    if isinstance(value, Mapping):
        inline = tomlkit.inline_table()
        inline.update({k: _value(v) for k, v in value.items()})
        return inline
    return value


def _resource_table(entry: Entry) -> Table:
    table = tomlkit.table()
    table.add(_comment(f"stream {entry.stream} holds {entry.holds}"))
    if entry.note:
        table.add(_comment(f"stream {entry.stream} {entry.note}"))
    for item in entry.left_out:
        table.add(_comment(f"left out (not declarable yet): {item}"))
    for key, value in entry.values.items():
        table.add(key, _value(value))
    return table


def _sections(export: Export) -> list[tuple[str, Table]]:
    out: list[tuple[str, Table]] = []
    for kind, section in SECTION.items():
        entries = [e for e in export.entries if e.kind is kind]
        if not entries:
            continue
        super_table = tomlkit.table(is_super_table=True)
        for entry in entries:
            super_table.add(entry.name, _resource_table(entry))
        out.append((section, super_table))
    return out


def _summary(export: Export) -> str:
    text = export.summary()
    if export.skipped:
        text += f"; {len(export.skipped)} not exported (listed below)"
    return text


def _stamp(now: datetime) -> str:
    return f"{now:%Y-%m-%d %H:%M:%S}Z"


def render(export: Export, *, settings: NatsSettings, now: datetime) -> str:
    """A complete declaration. `now` is naive UTC."""
    doc = tomlkit.document()
    doc.add(
        _comment(
            f"What {', '.join(settings.servers)} holds, exported by kanade-watchdog "
            f"at {_stamp(now)}: {_summary(export)}."
        )
    )
    doc.add(_comment("Only settings that differ from the broker's defaults are written."))
    doc.add(_comment("Review it, then: kanade-watchdog --config FILE validate, then plan."))
    for skipped in export.skipped:
        doc.add(_comment(str(skipped)))
    doc.add(tomlkit.nl())
    if export.spec_version > 1:
        doc.add(_comment("the highest spec_version the broker's resources carry"))
        doc.add("spec_version", export.spec_version)
        doc.add(tomlkit.nl())
    doc.add("nats", nats_table(settings))
    for section, table in _sections(export):
        doc.add(section, table)
    return tomlkit.dumps(doc)


def declared_streams(document: Mapping[str, Any]) -> set[str]:
    """The stream behind every resource a decoded declaration names."""
    out: set[str] = set()
    for kind, section in SECTION.items():
        table = document.get(section)
        if isinstance(table, Mapping):
            out.update(STREAM_PREFIX[kind] + str(name) for name in table)
    return out


class MergeError(ValueError):
    """The additions cannot be appended to this file's text."""


def merge(text: str, export: Export, *, now: datetime) -> str:
    """`text` unchanged, followed by the resources it does not declare.

    The file's own text is kept byte for byte (comments, order, layout) by
    appending rather than re-serialising it; `export` must already leave out
    what the file declares (`collect(skip_streams=...)`).
    """
    if not export.entries:
        return text
    document = tomllib.loads(text)
    doc = tomlkit.document()
    doc.add(
        _comment(
            f"Added by kanade-watchdog export at {_stamp(now)}: what the broker holds "
            f"that this file did not declare ({_summary(export)})."
        )
    )
    for skipped in export.skipped:
        doc.add(_comment(str(skipped)))
    version = document.get("spec_version", 1)
    newer = [e.stream for e in export.entries if (e.spec_version or 1) > version]
    if newer:
        doc.add(
            _comment(
                f"note: {', '.join(newer)} carry a spec_version above this file's {version}: "
                "plan leaves them alone until spec_version is raised"
            )
        )
    for section, table in _sections(export):
        doc.add(section, table)
    joint = "" if not text or text.endswith("\n") else "\n"
    merged = text + joint + "\n" + tomlkit.dumps(doc)
    try:
        tomllib.loads(merged)
    except tomllib.TOMLDecodeError as exc:
        # An inline `streams = {...}` table cannot be extended by a header.
        raise MergeError(f"the additions do not fit after this file's text ({exc})") from None
    return merged
