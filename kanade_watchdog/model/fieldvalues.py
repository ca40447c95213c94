"""Nested field values (mirror, sources, republish, ...) in one canonical form.

Pure. A declared table and the table the broker reports must compare equal
when they mean the same, so both go through `canon`: keys in the server's
JSON names, empty entries dropped (the server omits a zero `opt_start_seq`,
an empty filter, `headers_only: false`, a zero consumer limit), a start time
written in UTC, and the entries of an unordered list (`sources`, a source's
`subject_transforms`) sorted. The result is a `Table` (a frozen dict: it is
the JSON the API takes, as it stands) or `Items` (a tuple: an unordered list
of tables), both hashable, both printed the way a config writes them.
`sources` builds these from the config, `desired` compares them, `render`
and `plan` print them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from kanade_watchdog.model.printable import quote
from kanade_watchdog.model.units import format_duration_ns

# Keys of nested tables that hold nanoseconds: printed as durations.
DURATION_KEYS = frozenset({"inactive_threshold"})
# Nested lists whose order means nothing to the server.
UNORDERED_KEYS = frozenset({"sources", "subject_transforms"})


class Table(dict[str, Any]):
    """A canonical nested table: immutable, hashable, JSON as it stands."""

    def _frozen(self, *_args: Any, **_kwargs: Any) -> NoReturn:
        raise TypeError("a Table is immutable")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _frozen
    __ior__ = _frozen

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items(), key=lambda kv: kv[0])))

    def __str__(self) -> str:
        # The name first: it is what an operator looks for in a source.
        pairs = sorted(self.items(), key=lambda kv: (kv[0] != "name", kv[0]))
        return "{" + ", ".join(f"{k}={text(k, v)}" for k, v in pairs) + "}"

    __repr__ = __str__


class Items(tuple[Any, ...]):
    """A canonical unordered list (sorted, so equal lists are equal tuples)."""

    def __str__(self) -> str:
        return "[" + ", ".join(text("", v) for v in self) + "]"

    __repr__ = __str__


def text(key: str, value: Any) -> str:
    """A nested value as a config writes it: text quoted, durations readable."""
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int) and key in DURATION_KEYS:
        return format_duration_ns(value)
    if isinstance(value, Table | Items):
        return str(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(text(key, v) for v in value) + "]"
    return str(value)


def _empty(value: Any) -> bool:
    return value is None or value is False or value in ("", 0) or value in ((), {}, [])


def _order(items: Iterable[Any]) -> Items:
    return Items(sorted(items, key=lambda v: json.dumps(v, sort_keys=True, default=str)))


def canon(value: Any, key: str = "") -> Any:
    """The canonical form of a JSON-shaped value (see the module docstring)."""
    if isinstance(value, Mapping):
        pairs = []
        for k in sorted(value):
            v = canon(value[k], str(k))
            if not _empty(v):
                pairs.append((str(k), v))
        return Table(pairs)
    if isinstance(value, list | tuple):
        items = [canon(v, key) for v in value]
        return _order(items) if key in UNORDERED_KEYS else tuple(items)
    if key == "opt_start_time" and isinstance(value, str):
        try:
            return utc_time(value)
        except ValueError:
            return value  # shown as the broker wrote it; never equal to a valid one
    return value


def plain(value: Any) -> Any:
    """A canonical value as plain JSON types (dicts and lists)."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    return value


def list_diff(current: Any, desired: Any) -> tuple[list[Any], list[Any]]:
    """(added, removed) items between two unordered lists (either may be None)."""
    before = list(current or ())
    after = list(desired or ())
    return [v for v in after if v not in before], [v for v in before if v not in after]


def list_change(current: Any, desired: Any, show: Callable[[Any], str] = str) -> str:
    """A change of a list owned as a whole, as the items it adds and removes."""
    added, removed = list_diff(current, desired)
    parts = [f"added {show(v)}" for v in added] + [f"removed {show(v)}" for v in removed]
    return "; ".join(parts) or "reordered"


# --- times: RFC 3339 with nanoseconds, compared in UTC ----------------------------------

_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?([Zz]|[+-]\d\d:\d\d)"
)


def utc_time(value: str | datetime) -> str:
    """A point in time as the server's Go JSON writes it in UTC: seconds, then
    as many fraction digits as needed (up to nanoseconds), then `Z`. A time
    without an offset is refused: it would mean another instant on every host."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("needs a time zone offset, e.g. 2025-01-01T00:00:00Z")
        moment = value.astimezone(UTC)
        fraction = f"{moment.microsecond:06d}" if moment.microsecond else ""
        moment = moment.replace(microsecond=0)
    else:
        match = _RFC3339.fullmatch(value.strip()) if isinstance(value, str) else None
        if match is None:
            raise ValueError("must be an RFC 3339 time with an offset, e.g. 2025-01-01T00:00:00Z")
        year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
        fraction = match.group(7) or ""
        zone = match.group(8)
        offset = timedelta(0)
        if zone not in ("Z", "z"):
            sign = 1 if zone[0] == "+" else -1
            offset = sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
        try:
            moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC) - offset
        except (ValueError, OverflowError) as exc:
            raise ValueError(f"not a valid time ({exc})") from None
    fraction = fraction.rstrip("0")
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"
