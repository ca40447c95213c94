"""What one key of the config accepts: value parsers, each normalizing to the
broker's units (ns, bytes, -1 for unlimited) or raising `ValueError` (the
whole value is bad) or `problems.Invalid` (named parts of it are).

Pure. `config` maps every key of the schema to one of these and reports
what they raise through `problems.Problems`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from kanade_watchdog.config.problems import HIDDEN, Invalid, Parser, Part, unknown_key
from kanade_watchdog.config.problems import key as _key
from kanade_watchdog.config.problems import show as _show
from kanade_watchdog.model.secret import Secret
from kanade_watchdog.model.subjects import stream_name_problem, subject_problem, subjects_overlap
from kanade_watchdog.model.units import (
    INT64_MAX,
    NS_PER_SECOND,
    parse_duration_ns,
    parse_size_bytes,
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def duration(value: Any) -> int:
    """A string like '90d' or a whole number of seconds -> ns (>= 0)."""
    if _is_int(value):
        if value < 0:
            raise ValueError("must not be negative")
        if value * NS_PER_SECOND > INT64_MAX:
            raise ValueError("duration too large")
        return int(value) * NS_PER_SECOND
    if isinstance(value, str):
        return parse_duration_ns(value)
    raise ValueError("must be a duration like '90d' or a number of seconds")


MIN_AGE_NS = 100_000_000  # the broker refuses a max_age below 100ms (10052)
MIN_WINDOW_NS = 100_000_000  # and a duplicate_window below 100ms (10052)
# The broker counts a description in bytes (10052 past 4096), not characters.
MAX_DESCRIPTION_BYTES = 4096


def age(value: Any) -> int:
    """max_age / ttl: 0 is "keep forever", else at least 100ms."""
    ns = duration(value)
    if 0 < ns < MIN_AGE_NS:
        raise ValueError("must be 0 (no limit) or at least 100ms")
    return ns


def window(value: Any) -> int:
    # A 0 window is no exception: the broker turns it into its 2-minute
    # default, which would then read as drift on every pass.
    ns = duration(value)
    if ns < MIN_WINDOW_NS:
        raise ValueError("must be at least 100ms (the broker's minimum)")
    return ns


def size(limit: int = INT64_MAX) -> Parser:
    def parse(value: Any) -> int:
        if value == "unlimited":
            return -1
        if _is_int(value):
            if value < 0:
                raise ValueError('must not be negative (write "unlimited" for no cap)')
            n = int(value)
        elif isinstance(value, str):
            n = parse_size_bytes(value)
        else:
            raise ValueError("must be a size like '512MiB', a byte count or \"unlimited\"")
        if n > limit:
            raise ValueError(f"must be at most {limit} bytes")
        if n == 0:  # the broker stores 0 as "unlimited": say so instead
            raise ValueError('must be at least 1 byte (write "unlimited" for no cap)')
        return n

    return parse


def count(value: Any) -> int:
    if value == "unlimited":
        return -1
    if not _is_int(value):
        raise ValueError('must be a whole number or "unlimited"')
    if value < 0:
        raise ValueError('must not be negative (write "unlimited" for no limit)')
    if value > INT64_MAX:
        raise ValueError("too large")
    if value == 0:  # the broker stores 0 as "unlimited": say so instead
        raise ValueError('must be at least 1 (write "unlimited" for no limit)')
    return int(value)


def int_range(lo: int, hi: int) -> Parser:
    def parse(value: Any) -> int:
        if not _is_int(value) or not lo <= value <= hi:
            raise ValueError(f"must be a whole number from {lo} to {hi}")
        return int(value)

    return parse


def enum(*choices: str) -> Parser:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError("must be one of " + ", ".join(repr(c) for c in choices))
        return str(value)

    return parse


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def text(max_len: int = 4096) -> Parser:
    def parse(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError("must be a string")
        if len(value) > max_len:
            raise ValueError(f"longer than {max_len} characters")
        return value

    return parse


# Subjects the broker keeps for itself; a stream may not capture them.
_RESERVED_SUBJECTS = ("$JS.API.>", "$SYS.>")


def description(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    n_bytes = len(value.encode("utf-8"))
    if n_bytes > MAX_DESCRIPTION_BYTES:
        raise ValueError(
            f"{n_bytes} bytes in UTF-8, over the broker's {MAX_DESCRIPTION_BYTES}-byte limit"
        )
    return value


def subjects(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError("must be a non-empty list of subjects")
    out: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"every subject must be a string, got {_show(item)}")
        problem = subject_problem(item)
        if problem:
            raise ValueError(f"subject {item!r} {problem}")
        for reserved in _RESERVED_SUBJECTS:
            if subjects_overlap(item, reserved):
                raise ValueError(f"subject {item!r} captures the broker's own {reserved}")
        if item in out:
            raise ValueError(f"subject {item!r} is listed twice")
        for earlier in out:
            if subjects_overlap(item, earlier):
                raise ValueError(f"subject {item!r} overlaps {earlier!r} of the same stream")
        out.append(item)
    return tuple(out)


def unknown_keys(table: dict[str, Any], known: Mapping[str, Any] | tuple[str, ...]) -> None:
    """Every key of a nested table that the schema does not know, one line each."""
    unknown = [k for k in table if k not in known]
    if unknown:
        raise Invalid(Part(f".{_key(k)}", unknown_key(k, known)) for k in unknown)


def table(value: dict[str, Any], known: Mapping[str, Parser]) -> dict[str, Any]:
    """A nested table parsed key by key: every unknown key and every bad value is
    its own line, at its own key path."""
    parts: list[Part] = []
    parsed: dict[str, Any] = {}
    for k, v in value.items():
        parser = known.get(k)
        if parser is None:
            parts.append(Part(f".{_key(k)}", unknown_key(k, known)))
            continue
        try:
            parsed[k] = parser(v)
        except (ValueError, TypeError, OverflowError) as exc:
            parts.append(Part(f".{k}", str(exc), v))
    if parts:
        raise Invalid(parts)
    return parsed


def placement(value: Any) -> tuple[tuple[str, Any], ...]:
    if not isinstance(value, dict):
        raise ValueError("must be a table with 'cluster' and/or 'tags'")
    unknown_keys(value, ("cluster", "tags"))
    cluster = value.get("cluster", "")
    tags = value.get("tags", [])
    if not isinstance(cluster, str):
        raise ValueError("cluster must be a string")
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise ValueError("tags must be a list of non-empty strings")
    return (("cluster", cluster), ("tags", tuple(sorted(tags))))


# The marker every write carries (`desired.marker`) lives under this prefix:
# a declared key there would be overwritten by the marker on every write, and
# the marker by it, so the stream would never read as in sync.
MARKER_PREFIX = "kanade."


def metadata(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise ValueError("must be a table of string values")
    parts: list[Part] = []
    for k, v in value.items():
        at = f".{_key(k)}"
        if k.startswith("_nats"):
            parts.append(Part(at, "is reserved by the server (_nats.*)", v))
        elif k.startswith(MARKER_PREFIX):
            parts.append(
                Part(at, f"is reserved for the watchdog's own marker ({MARKER_PREFIX}*)", v)
            )
        elif not isinstance(v, str):
            parts.append(Part(at, "must be a string", v))
    if parts:
        raise Invalid(parts)
    return tuple(sorted(value.items()))


def seconds(value: Any) -> float:
    return duration(value) / NS_PER_SECOND


def positive_seconds(value: Any) -> float:
    s = seconds(value)
    if s <= 0:
        raise ValueError("must be greater than zero")
    return s


_URL_SCHEMES = ("nats", "tls", "ws", "wss")


def _url_problem(url: Any) -> tuple[str, Any] | None:
    """(why, what to show) when `url` is not a server URL the client can use."""
    if not isinstance(url, str):
        return "must be a URL like nats://host:4222", url
    if "@" in url:
        # Userinfo, wherever the parser would place it: a password holding '/',
        # '?' or '#' ends the authority early, and the rest would pass for a
        # path. No part of such a URL is shown.
        return (
            "credentials in a server URL are not allowed "
            "(use token_file, or user and password_file)",
            HIDDEN,
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a URL like nats://host:4222 (bad host or port)", url
    if parts.scheme not in _URL_SCHEMES:
        return f"must be a URL like nats://host:4222 (scheme one of {', '.join(_URL_SCHEMES)})", url
    if not parts.hostname or port == 0:
        return "must name a host (and a port from 1 to 65535), like nats://host:4222", url
    if parts.query or parts.fragment:
        return "a server URL has no query or fragment", url
    if parts.scheme in ("nats", "tls") and parts.path:
        return "a nats:// or tls:// URL has no path", url
    return None


def servers(value: Any) -> tuple[str, ...]:
    urls = [value] if isinstance(value, str) else value
    if not isinstance(urls, list) or not urls:
        raise ValueError("must be a URL or a non-empty list of URLs")
    parts: list[Part] = []
    for i, url in enumerate(urls):
        problem = _url_problem(url)
        if problem is not None:
            which = f"URL {i + 1}: " if len(urls) > 1 else ""
            parts.append(Part("", which + problem[0], problem[1]))
    if parts:
        raise Invalid(parts)
    return tuple(urls)


def stream_name(value: Any) -> str:
    problem = stream_name_problem(value) if isinstance(value, str) else "must be a string"
    if problem:
        raise ValueError(problem)
    return str(value)


domain = stream_name  # a JetStream domain follows the stream-name rules


def secret(value: Any) -> Secret:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    return Secret(value)


def file_path(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a file path")
    return value


# `[http] listen`: the documented address, loopback only.
DEFAULT_LISTEN = "127.0.0.1:9464"
_PORT = re.compile(r"[0-9]{1,5}")


def parse_listen(value: object) -> tuple[str, int]:
    """`[http] listen` as (host, port) for `Endpoint`.

    Accepts "IPv4:PORT", "[IPv6]:PORT" and "localhost:PORT"; other host names
    are refused (a name that resolves elsewhere must not widen the listener
    by surprise), as is a missing host (":9464" would mean every interface).
    The ValueError's text says what is wrong; the config loader adds the key
    and the value.
    """
    if not isinstance(value, str):
        raise ValueError(f'must be a string "HOST:PORT" such as "{DEFAULT_LISTEN}"')
    if value.startswith("["):
        inside, bracket, rest = value[1:].partition("]")
        if not bracket:
            raise ValueError("an IPv6 address needs its closing ], as in [::1]:9464")
        try:
            host = str(ipaddress.IPv6Address(inside))
        except ValueError:
            raise ValueError(f"not an IPv6 address inside the brackets: {inside!r}") from None
        if not rest.startswith(":"):
            raise ValueError("missing :PORT after the IPv6 address, as in [::1]:9464")
        port_text = rest[1:]
    else:
        host_text, colon, port_text = value.rpartition(":")
        if not colon:
            raise ValueError(f'missing :PORT, as in "{DEFAULT_LISTEN}"')
        if not host_text:
            raise ValueError(
                'missing host: write "127.0.0.1:PORT" for loopback, '
                '"0.0.0.0:PORT" for every interface'
            )
        if ":" in host_text:
            raise ValueError("an IPv6 address goes in brackets, as in [::1]:9464")
        if host_text.lower() == "localhost":
            host = "localhost"
        else:
            try:
                host = str(ipaddress.IPv4Address(host_text))
            except ValueError:
                raise ValueError(
                    f"host must be an IPv4 address, [IPv6] or localhost, not {host_text!r}"
                ) from None
    if host != "localhost" and ipaddress.ip_address(host.partition("%")[0]).is_multicast:
        raise ValueError("a multicast address cannot be listened on")
    if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port must be a number from 1 to 65535, not {port_text!r}")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """Whether a `parse_listen` host only accepts connections from this machine."""
    if host == "localhost":
        return True
    return ipaddress.ip_address(host.partition("%")[0]).is_loopback
