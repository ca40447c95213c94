"""Problem lines for the config file: collected, capped, and free of secrets.

Pure. `config` reports through `Problems`; a value parser says what is wrong
by raising `ValueError` (the whole value is bad) or `Invalid` (named parts of
it are, each on its own line). Every line reads
`<file>: <key path>: <what is wrong>, got <value>`.

Secrets: a value is never shown when any key on its path looks secret
(`looks_secret`), and a table or list shown as a value has every entry under
such a key replaced by `<hidden>`, however deep.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

# Lines of one kind beyond this are counted, not listed: 3,000 overlapping
# streams must not print thousands of lines, nor hold them in memory.
MAX_LINES_PER_KIND = 20

_SECRET_WORDS = (
    "pass",
    "pwd",
    "token",
    "secret",
    "seed",
    "nkey",
    "cred",
    "jwt",
    "private",
    "apikey",
    "api_key",
)


def looks_secret(name: str) -> bool:
    """A key whose value may be a secret. A `*_file` key holds the path to one,
    not the secret itself, and its path is shown so the operator can find it."""
    lowered = name.strip('"').lower()
    if lowered.endswith("_file"):
        return False
    return any(word in lowered for word in _SECRET_WORDS)


def path_looks_secret(key_path: str) -> bool:
    # Splitting a quoted key at its dots finds more parts, never fewer.
    return any(looks_secret(part) for part in key_path.split("."))


class Verbatim(str):
    """Text already fit to show as a value (its repr is itself)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)


HIDDEN = Verbatim("<hidden>")
_MORE = Verbatim("...")
_MAX_ITEMS = 20  # a shown value is cut at 80 characters anyway
_MAX_DEPTH = 20


def _url_with_credentials(text: str) -> bool:
    """`nats://user:pass@host`, `tok@host`, `user:pass@host`: anything with userinfo.
    A plain `someone@example.com` has neither a scheme nor a ':' before the '@'."""
    before, at, _ = text.rpartition("@")
    return bool(at) and ("://" in text or ":" in before)


def _redact(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str) and _url_with_credentials(value):
        return HIDDEN
    if depth > _MAX_DEPTH and isinstance(value, dict | list):
        return _MORE
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for i, (k, v) in enumerate(value.items()):
            if i == _MAX_ITEMS:
                out[_MORE] = _MORE
                break
            out[k] = HIDDEN if isinstance(k, str) and looks_secret(k) else _redact(v, depth + 1)
        return out
    if isinstance(value, list):
        items = [_redact(v, depth + 1) for v in value[:_MAX_ITEMS]]
        return [*items, _MORE] if len(value) > _MAX_ITEMS else items
    return value


def show(value: Any) -> str:
    """A value as a problem line shows it: repr, secrets hidden, at most 80 characters."""
    try:
        text = repr(_redact(value))
    except ValueError:  # an integer beyond Python's 4300-digit str() limit
        return f"a {value.bit_length()}-bit integer"
    return text if len(text) <= 80 else text[:77] + "..."


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def key(name: str) -> str:
    """A key as it appears in a key path: quoted (and so on one line) unless it
    is a plain TOML bare key."""
    return name if _PLAIN_KEY.fullmatch(name) else json.dumps(name)


_NOTHING: Any = object()  # no value to show on this line


@dataclass(frozen=True)
class Part:
    """One problem inside a value: `at` extends the key path (`.x`, `."a.b"`)."""

    at: str
    reason: str
    got: Any = _NOTHING


class Invalid(ValueError):
    """A value with problems in named parts of it, one line each."""

    def __init__(self, parts: Iterable[Part]) -> None:
        self.parts = tuple(parts)
        super().__init__("; ".join(p.reason for p in self.parts))


Parser = Callable[[Any], Any]


class Problems:
    """Collects one line per problem, so an operator fixes them all in one go.

    `kind` groups lines that repeat per resource or per key: a key path with
    `*` for the names (`streams.*.max_age`). Past `MAX_LINES_PER_KIND` lines of
    a kind only a count is kept, and reported as one line at the end.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lines: list[str] = []
        self._per_kind: Counter[str] = Counter()
        self.found = 0  # every problem, listed or not

    def add(self, key_path: str, message: str, *, kind: str | None = None) -> None:
        self.found += 1
        kind = kind or key_path
        self._per_kind[kind] += 1
        if self._per_kind[kind] <= MAX_LINES_PER_KIND:
            self._lines.append(f"{self.path}: {key_path}: {message}")

    def bad(self, key_path: str, reason: str, value: Any, *, kind: str | None = None) -> None:
        """`<key path>: <reason>, got <value>`, the value hidden under a secret key."""
        shown = HIDDEN if path_looks_secret(key_path) else show(value)
        self.add(key_path, f"{reason}, got {shown}", kind=kind)

    def parse(self, key_path: str, parser: Parser, value: Any, *, kind: str | None = None) -> Any:
        """`parser(value)`, or None after reporting why it failed."""
        try:
            return parser(value)
        except Invalid as exc:
            for part in exc.parts:
                at = key_path + part.at
                sub_kind = (kind or key_path) + (".*" if part.at else "")
                if part.got is _NOTHING:
                    self.add(at, part.reason, kind=sub_kind)
                else:
                    self.bad(at, part.reason, part.got, kind=sub_kind)
        except (ValueError, TypeError, OverflowError) as exc:
            self.bad(key_path, str(exc), value, kind=kind)
        return None

    @property
    def lines(self) -> list[str]:
        more = [
            f"{self.path}: {kind}: {count - MAX_LINES_PER_KIND} more problems like the "
            f"{MAX_LINES_PER_KIND} above, not listed"
            for kind, count in self._per_kind.items()
            if count > MAX_LINES_PER_KIND
        ]
        return self._lines + more


def unknown_key(name: str, known: Iterable[str]) -> str:
    """Why a key is refused, with the nearest known key when one is close."""
    import difflib  # noqa: PLC0415 - only a file with a wrong key pays for it at start-up

    choices = list(known)
    # A long name is like no key at all; comparing it would only cost time.
    close = difflib.get_close_matches(name, choices, n=1) if len(name) <= 64 else []
    hint = f", did you mean {close[0]!r}?" if close else ""
    return f"unknown key{hint} (known: {', '.join(choices)})"
