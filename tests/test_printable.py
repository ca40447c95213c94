"""Escaping text from outside before it is printed: one record stays one line,
printable text is left alone, and a quoted value reads back exactly."""

from __future__ import annotations

import ast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kanade_watchdog.model.printable import escape, key, quote

FORGED = "ops\n2026-01-01 INFO    created stream FORGED"


@given(st.text())
def test_escaped_text_is_all_printable(text: str) -> None:
    """Whatever the broker sends, the escaped text has no newline, control,
    separator or format character left: it cannot start a line of its own."""
    out = escape(text)
    assert out.isprintable()
    assert "\n" not in out
    assert "\r" not in out


# Everything Python calls printable: no "Other" or "Separator" category but the space.
PRINTABLE = st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"))


@given(st.text(alphabet=PRINTABLE | st.just(" ")))
def test_printable_text_is_left_as_it_is(text: str) -> None:
    """Names in any script, spaces included, print unchanged."""
    assert escape(text) == text


@given(st.text())
def test_a_quoted_value_reads_back_exactly(text: str) -> None:
    """quote() is a faithful string literal: parsing it gives the value back, so
    two different values never print the same and a quote inside a value
    cannot end it early."""
    out = quote(text)
    assert out.isprintable()
    assert ast.literal_eval(out) == text


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (FORGED, "ops\\n2026-01-01 INFO    created stream FORGED"),
        ("a\rb\tc", "a\\rb\\tc"),
        ("\x1b[2J", "\\x1b[2J"),
        ("x\u2028y", "x\\u2028y"),
        ("right\u202eleft", "right\\u202eleft"),
        ("Grüße 東京", "Grüße 東京"),
        ("back\\slash", "back\\slash"),
    ],
)
def test_escape_examples(text: str, shown: str) -> None:
    """Controls, line separators and bidi overrides become visible escapes."""
    assert escape(text) == shown


def test_keys_are_bare_only_when_plain() -> None:
    """A plain metadata key prints bare; anything else is quoted."""
    assert key("owner") == "owner"
    assert key("kanade.spec_version") == "kanade.spec_version"
    assert key("a b") == '"a b"'
    assert key("x\ny") == '"x\\ny"'
    assert key("") == '""'
