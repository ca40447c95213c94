"""What the connected nats-server can do: its version and JetStream API level.

Pure. `from_info` reads the connection's INFO (`version`, and `api_lvl` from
2.11 on); `broker` hands the result to the planner, which blocks a resource
that declares a field the server is too old for, naming the field and the
version that brought it: an older server would silently drop a field it does
not know, and the stream would be created without it. Servers of API level 1
(2.11) and newer take pedantic create and update requests (`"pedantic": true`
next to the config), which refuse instead of silently adjusting a value.
`needs_newer` words the fact for `check` and STATUS.

JetStream API levels: 2.10 -> 0, 2.11 -> 1, 2.12 -> 2 (the server also
stamps a stream's `_nats.req.level`: the level its config needs).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from kanade_watchdog.config.streamfields import Version, requirements, version_text

PEDANTIC_LEVEL = 1  # 2.11: the create/update request takes "pedantic"
_LEVEL_OF: dict[tuple[int, int], int] = {(2, 10): 0, (2, 11): 1, (2, 12): 2}
_VERSION = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True)
class ServerInfo:
    """The server as its INFO describes it; `None` parts are unknown."""

    version: Version | None = None
    api_level: int | None = None
    text: str = ""  # the version as reported, for messages

    @property
    def pedantic(self) -> bool:
        """Create and update requests may ask for pedantic mode."""
        if self.api_level is not None:
            return self.api_level >= PEDANTIC_LEVEL
        return self.version is not None and self.version >= (2, 11, 0)

    def supports(self, since: Version) -> bool:
        """True unless the server is known to be older than `since`."""
        if self.version is not None:
            return self.version >= since
        if self.api_level is not None:
            # Without a version, the API level still tells 2.11+ apart.
            needed = _LEVEL_OF.get(since[:2])
            return needed is None or self.api_level >= needed
        return True

    def __str__(self) -> str:
        return self.text or "unknown"


def parse_version(text: Any) -> Version | None:
    match = _VERSION.match(text) if isinstance(text, str) else None
    if match is None:
        return None
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def from_info(info: Mapping[str, Any]) -> ServerInfo:
    """From a connection's INFO: `version` always, `api_lvl` on 2.11+."""
    text = info.get("version")
    level = info.get("api_lvl")
    version = parse_version(text)
    if not isinstance(level, int) or isinstance(level, bool):
        level = _LEVEL_OF.get(version[:2]) if version is not None else None
    return ServerInfo(version=version, api_level=level, text=str(text) if text else "")


def unsupported(kind: str, declared: Mapping[str, Any], server: ServerInfo) -> list[str]:
    """Every declared field the server is too old for, as `field (since X)`."""
    return [
        f"{key} (nats-server {version_text(since)})"
        for key, since in requirements(kind, declared)
        if not server.supports(since)
    ]


def blocked_reason(fields: Iterable[str], server: ServerInfo) -> str:
    """Why a resource is left alone: a server that would silently drop fields."""
    listed = ", ".join(fields)
    return (
        f"the connected nats-server {server} does not support {listed}; it would drop "
        "what it does not know, so nothing is written: upgrade the server or remove the field"
    )


def needs_newer(labels_fields: Iterable[tuple[str, Iterable[str]]], server: ServerInfo) -> str:
    """One line for `check` and STATUS: the server version and what needs a newer one."""
    parts = [f"{label} needs {', '.join(fields)}" for label, fields in labels_fields]
    if not parts:
        return ""
    return f"nats-server {server} too old: " + "; ".join(parts)


class _Resource(Protocol):
    @property
    def label(self) -> str: ...


class _Decision(Protocol):
    @property
    def resource(self) -> _Resource: ...

    @property
    def too_new(self) -> tuple[str, ...]: ...


def needs_newer_text(decisions: Iterable[_Decision], server: ServerInfo | None) -> str:
    """`needs_newer` for a plan's decisions (`plan.Decision.too_new`); "" when
    every declared field is supported or the server is unknown."""
    if server is None:
        return ""
    return needs_newer(((d.resource.label, d.too_new) for d in decisions if d.too_new), server)
