"""Readable durations and sizes, both ways.

Pure helpers used by `config` (parsing what an operator wrote) and by the
renderers (showing what the broker holds). JetStream speaks nanoseconds and
bytes; operators write "90d" and "512MiB".
"""

from __future__ import annotations

import re

NS_PER_SECOND = 1_000_000_000

_DURATION_UNITS_NS: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "ms": 1_000_000,
    "s": NS_PER_SECOND,
    "m": 60 * NS_PER_SECOND,
    "h": 3600 * NS_PER_SECOND,
    "d": 86400 * NS_PER_SECOND,
    "w": 7 * 86400 * NS_PER_SECOND,
}

_SIZE_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
    "t": 1024**4,
}

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h|d|w)")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")

# JetStream stores these as Go int64.
INT64_MAX = 2**63 - 1


def _exact(number: str, unit: int) -> tuple[int, int]:
    """A decimal numeral ("1.5") times `unit`, exactly, as numerator and
    denominator (a power of ten). Integers rather than `fractions.Fraction`:
    that module (with `decimal` and `numbers`) cost every one-shot command
    ~3 ms of start-up, more than all of these parses."""
    whole, _, frac = number.partition(".")
    return int(whole + frac) * unit, 10 ** len(frac)


def parse_duration_ns(text: str) -> int:
    """'90d', '1h30m', '500ms' -> nanoseconds. Raises ValueError with the reason."""
    s = text.strip().lower()
    if not s:
        raise ValueError("empty duration")
    pos = 0
    total, den = 0, 1  # exact: floats lose nanoseconds beyond 2**53
    for match in _DURATION_PART.finditer(s):
        if match.start() != pos:
            break
        num, part_den = _exact(match.group(1), _DURATION_UNITS_NS[match.group(2)])
        common = max(den, part_den)  # both powers of ten: the larger is a multiple
        total, den = total * (common // den) + num * (common // part_den), common
        pos = match.end()
    if pos != len(s):
        raise ValueError("not a duration (use e.g. 90d, 12h, 30m, 45s, 500ms)")
    if total > INT64_MAX * den:
        raise ValueError("duration too large")
    whole, rest = divmod(total, den)
    # Half a nanosecond rounds to even, as round() does.
    return whole + int(2 * rest > den or (2 * rest == den and whole % 2 == 1))


def parse_size_bytes(text: str) -> int:
    """'512MiB', '2GiB', '1GB', '300' -> bytes. Raises ValueError with the reason."""
    s = text.strip().lower()
    match = _SIZE.fullmatch(s)
    if not match or match.group(2) not in _SIZE_UNITS | {"": 1}:
        raise ValueError("not a size (use e.g. 512MiB, 2GiB, 100MB or a byte count)")
    num, den = _exact(match.group(1), _SIZE_UNITS.get(match.group(2), 1))
    if num > INT64_MAX * den:
        raise ValueError("size too large")
    if num % den:
        raise ValueError("not a whole number of bytes")
    return num // den


def format_duration_ns(ns: int) -> str:
    """Nanoseconds -> the shortest exact readable form ('90d', '2m', '1500ms')."""
    if ns == 0:
        return "0s"
    for unit in ("w", "d", "h", "m", "s", "ms", "us", "ns"):
        size = _DURATION_UNITS_NS[unit]
        if ns % size == 0:
            return f"{ns // size}{unit}"
    return f"{ns}ns"  # pragma: no cover - ns always divides


def format_size(n: int) -> str:
    """Bytes -> '512MiB', '2GiB', exact when it can be, else one decimal."""
    if n < 0:
        return "unlimited"
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            if n % size == 0:
                return f"{n // size}{unit}"
            return f"{n / size:.1f}{unit}"
    return f"{n}B"
