"""Readable durations and sizes: parsing what operators write, formatting what
the broker holds, and the round trip between the two."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kanade_watchdog.model.units import (
    INT64_MAX,
    format_duration_ns,
    format_size,
    parse_duration_ns,
    parse_size_bytes,
)

NS = 1
US = 1_000 * NS
MS = 1_000 * US
SEC = 1_000 * MS
MIN = 60 * SEC
HOUR = 60 * MIN
DAY = 24 * HOUR
WEEK = 7 * DAY

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
TIB = 1024 * GIB


# --- durations -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90d", 90 * DAY),
        ("1h30m", HOUR + 30 * MIN),
        ("500ms", 500 * MS),
        ("45s", 45 * SEC),
        ("30m", 30 * MIN),
        ("12h", 12 * HOUR),
        ("2w", 2 * WEEK),
        ("250us", 250 * US),
        ("7ns", 7),
        ("1m30s", MIN + 30 * SEC),
        ("1d12h30m15s", DAY + 12 * HOUR + 30 * MIN + 15 * SEC),
        ("1.5h", 90 * MIN),
        ("0.5s", 500 * MS),
        ("0s", 0),
        ("  12H  ", 12 * HOUR),
        ("90D", 90 * DAY),
        ("1m1ms", MIN + MS),
    ],
    ids=lambda v: repr(v) if isinstance(v, str) else None,
)
def test_parse_duration_accepts_operator_forms(text: str, expected: int) -> None:
    """An operator's duration ('90d', '1h30m', '500ms') becomes exact nanoseconds."""
    assert parse_duration_ns(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "90",
        "d",
        "90x",
        "90 d",
        "1h 30m",
        "1h30",
        "-5s",
        "+5s",
        "1e3s",
        "h1",
        "1.s",
        ".5s",
        "5 days",
        "5sec",
        "1,5h",
        "1h-30m",
        "unlimited",
    ],
    ids=repr,
)
def test_parse_duration_rejects_garbage(text: str) -> None:
    """Anything that is not a sequence of <number><unit> parts raises ValueError."""
    with pytest.raises(ValueError, match=r"duration"):
        parse_duration_ns(text)


@pytest.mark.parametrize("text", ["106752d", "15251w", "9223372036854775808ns"], ids=repr)
def test_parse_duration_rejects_beyond_int64(text: str) -> None:
    """A duration JetStream cannot store as an int64 of nanoseconds is refused as too large."""
    with pytest.raises(ValueError, match="too large"):
        parse_duration_ns(text)


def test_parse_duration_accepts_the_largest_whole_day() -> None:
    """The last whole day below the int64 nanosecond limit is still a valid duration."""
    days = INT64_MAX // DAY
    assert parse_duration_ns(f"{days}d") == days * DAY


def test_parse_duration_is_exact_beyond_float_precision() -> None:
    """A whole-nanosecond duration beyond 2**53 parses to exactly that many nanoseconds."""
    n = 2**53 + 1
    assert parse_duration_ns(f"{n}ns") == n


def test_parse_duration_overflowing_digits_raise_value_error() -> None:
    """A number too long for a float is refused with ValueError, like every other bad input."""
    with pytest.raises(ValueError, match="too large"):
        parse_duration_ns("1" * 400 + "s")


# --- sizes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512MiB", 512 * MIB),
        ("2GiB", 2 * GIB),
        ("100MB", 100_000_000),
        ("1GB", 1_000_000_000),
        ("1TB", 10**12),
        ("1TiB", TIB),
        ("64KiB", 64 * KIB),
        ("64kb", 64_000),
        ("300", 300),
        ("300B", 300),
        ("0", 0),
        ("1.5KiB", 1536),
        ("0.5GiB", GIB // 2),
        ("16M", 16 * MIB),
        ("1k", KIB),
        ("2g", 2 * GIB),
        ("1t", TIB),
        ("  64 MiB ", 64 * MIB),
        ("512mib", 512 * MIB),
    ],
    ids=lambda v: repr(v) if isinstance(v, str) else None,
)
def test_parse_size_accepts_operator_forms(text: str, expected: int) -> None:
    """An operator's size ('512MiB', '2GiB', '100MB', a byte count) becomes bytes."""
    assert parse_size_bytes(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "MiB", "-1", "-5MiB", "12XB", "1e3", "1,5GiB", "unlimited", "5 MiB extra", "1PiB"],
    ids=repr,
)
def test_parse_size_rejects_garbage(text: str) -> None:
    """Anything but <number>[unit] with a known unit raises ValueError naming what a size is."""
    with pytest.raises(ValueError, match="not a size"):
        parse_size_bytes(text)


@pytest.mark.parametrize("text", ["1.5", "1.1B", "0.0005KB", "1.0000001KiB"], ids=repr)
def test_parse_size_rejects_fractional_bytes(text: str) -> None:
    """A size that does not come to a whole number of bytes is refused."""
    with pytest.raises(ValueError, match="whole number of bytes"):
        parse_size_bytes(text)


@pytest.mark.parametrize("text", ["8388608TiB", "9223372036854775808", "10000000TB"], ids=repr)
def test_parse_size_rejects_beyond_int64(text: str) -> None:
    """A size JetStream cannot store as an int64 is refused as too large."""
    with pytest.raises(ValueError, match="too large"):
        parse_size_bytes(text)


@pytest.mark.parametrize("n", [INT64_MAX, 2**53 + 1], ids=["int64-max", "2**53+1"])
def test_parse_size_is_exact_for_every_int64(n: int) -> None:
    """A plain byte count up to INT64_MAX parses to exactly that count."""
    assert parse_size_bytes(str(n)) == n


# --- formatting and round trips --------------------------------------------------


@pytest.mark.parametrize(
    ("ns", "expected"),
    [
        (0, "0s"),
        (90 * DAY, "90d"),
        (2 * WEEK, "2w"),
        (2 * MIN, "2m"),
        (1500 * MS, "1500ms"),
        (HOUR + 30 * MIN, "90m"),
        (1, "1ns"),
        (250 * US, "250us"),
        (30 * SEC, "30s"),
    ],
)
def test_format_duration_is_the_shortest_exact_form(ns: int, expected: str) -> None:
    """Nanoseconds are shown in the largest unit that divides them exactly."""
    assert format_duration_ns(ns) == expected


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (-1, "unlimited"),
        (0, "0B"),
        (1023, "1023B"),
        (KIB, "1KiB"),
        (512 * MIB, "512MiB"),
        (2 * GIB, "2GiB"),
        (3 * TIB, "3TiB"),
        (1536, "1.5KiB"),
        (GIB + GIB // 4, "1.2GiB"),
        (1024 * TIB, "1024TiB"),
    ],
)
def test_format_size_is_exact_or_one_decimal(n: int, expected: str) -> None:
    """Bytes are shown exactly in the largest binary unit, else with one decimal."""
    assert format_size(n) == expected


@given(st.integers(min_value=0, max_value=2**53))
@settings(max_examples=300, deadline=None)
def test_duration_round_trip(ns: int) -> None:
    """Formatting a duration and parsing it back gives the same nanoseconds."""
    assert parse_duration_ns(format_duration_ns(ns)) == ns


@given(
    st.one_of(
        st.integers(min_value=0, max_value=1023),
        st.builds(
            lambda k, unit: k * unit,
            st.integers(min_value=1, max_value=1023),
            st.sampled_from([KIB, MIB, GIB]),
        ),
        st.builds(lambda k: k * TIB, st.integers(min_value=1, max_value=10**6)),
    )
)
@settings(max_examples=300, deadline=None)
def test_exact_size_round_trip(n: int) -> None:
    """An exactly formatted size parses back to the same number of bytes."""
    text = format_size(n)
    assert "." not in text
    assert parse_size_bytes(text) == n


@given(st.integers(min_value=0, max_value=2**50))
@settings(max_examples=300, deadline=None)
def test_formatted_size_is_close_to_the_truth(n: int) -> None:
    """A formatted size, exact or rounded, is within 5% of the real byte count."""
    text = format_size(n)
    number, unit = (text[:-3], text[-3:]) if text.endswith("iB") else (text[:-1], "B")
    scale = {"B": 1, "KiB": KIB, "MiB": MIB, "GiB": GIB, "TiB": TIB}[unit]
    assert abs(float(number) * scale - n) <= 0.05 * n
