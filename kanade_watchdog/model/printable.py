"""Text from outside made safe to print on one line. Pure, no I/O.

Stream names, subjects, metadata and error texts come from the broker, which
any client with update rights can write to. Printed raw, a newline in a
metadata value forges a whole log line, and a terminal escape rewrites the
operator's screen. `escape` turns every character that is not printable
(controls, line and paragraph separators, bidi overrides, lone surrogates)
into a Python-style escape, so one record stays one line. `quote` also
escapes quotes and backslashes, so a quoted value cannot be mistaken for
the text around it. Used by `render` (diff values, every printed line),
`cli` (error lines) and `logs` (the text log formatter).
"""

from __future__ import annotations

import re

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_BARE_KEY = re.compile(r"[A-Za-z0-9_.-]+\Z")


def _escape_char(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(text: str) -> str:
    """`text` with every non-printable character escaped; printable text
    (any script, spaces included) is returned unchanged."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape_char(ch) for ch in text)


def quote(text: str) -> str:
    """`text` in double quotes, escaped so that it reads back exactly as a
    Python (and, for printable text, TOML basic) string literal."""
    return '"' + escape(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def key(text: str) -> str:
    """A mapping key: bare when it is a plain word, quoted otherwise."""
    return text if _BARE_KEY.match(text) else quote(text)
