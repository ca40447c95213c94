"""NATS subject and name rules, checked before anything reaches the broker.

Pure. Used by `config` to reject what the broker would reject anyway (with a
far less helpful message) and to find streams whose subjects overlap, which
the broker refuses with 10065 at create time.
"""

from __future__ import annotations

import contextlib
import re

MAX_NAME_LEN = 255
_BAD_STREAM_NAME_CHARS = re.compile(r"[.*>/\\\s]|[^\x21-\x7e]")
_BUCKET_NAME = re.compile(r"[A-Za-z0-9_-]+")


def stream_name_problem(name: str) -> str | None:
    """Why the broker would reject `name` as a stream name, or None."""
    if not name:
        return "must not be empty"
    if len(name) > MAX_NAME_LEN:
        return f"longer than {MAX_NAME_LEN} characters"
    if _BAD_STREAM_NAME_CHARS.search(name):
        return "must be printable ASCII without spaces, '.', '*', '>', '/' or '\\'"
    return None


def bucket_name_problem(name: str) -> str | None:
    """Why a KV or object-store bucket name is invalid, or None."""
    if not _BUCKET_NAME.fullmatch(name):
        return "may only contain letters, digits, '_' and '-'"
    if len(name) + 4 > MAX_NAME_LEN:  # the backing stream is KV_/OBJ_ + name
        return f"longer than {MAX_NAME_LEN - 4} characters"
    return None


def subject_problem(subject: str) -> str | None:
    """Why `subject` is not a valid stream subject filter, or None."""
    if not subject:
        return "must not be empty"
    if any(ch.isspace() for ch in subject) or not subject.isprintable():
        return "must not contain whitespace or control characters"
    tokens = subject.split(".")
    for i, token in enumerate(tokens):
        if not token:
            return "has an empty token (leading, trailing or double '.')"
        if token == ">" and i != len(tokens) - 1:
            return "'>' may only be the last token"
        if token not in ("*", ">") and ("*" in token or ">" in token):
            return "wildcards must be whole tokens"
    return None


def subjects_overlap(a: str, b: str) -> bool:
    """True when some concrete subject matches both filters."""
    ta, tb = a.split("."), b.split(".")
    for x, y in zip(ta, tb, strict=False):
        if x == ">" or y == ">":
            return True
        if x not in (y, "*") and y != "*":
            return False
    return len(ta) == len(tb)


class _Node:
    __slots__ = ("children", "ends", "tails")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.ends: list[str] = []  # subjects that end at this node
        self.tails: list[str] = []  # subjects that end with '>' right below this node


class _Enough(Exception):
    """The walk found as many subjects as were asked for."""


class _Found:
    __slots__ = ("items", "limit")

    def __init__(self, items: list[str], limit: int | None) -> None:
        self.items = items
        self.limit = limit

    def extend(self, subjects: list[str]) -> None:
        self.items.extend(subjects)
        if self.limit is not None and len(self.items) >= self.limit:
            raise _Enough


class SubjectIndex:
    """Subjects filed token by token, so finding the ones a new subject
    overlaps costs about its own length, not the number already filed."""

    def __init__(self) -> None:
        self._root = _Node()

    def add(self, subject: str) -> None:
        node = self._root
        tokens = subject.split(".")
        for token in tokens[:-1]:
            node = node.children.setdefault(token, _Node())
        if tokens[-1] == ">":
            node.tails.append(subject)
        else:
            node.children.setdefault(tokens[-1], _Node()).ends.append(subject)

    def overlapping(self, subject: str, *, limit: int | None = None) -> list[str]:
        """Every filed subject that some concrete subject matches along with
        `subject`; with `limit`, the walk stops once that many are found."""
        found: list[str] = []
        with contextlib.suppress(_Enough):
            self._walk(self._root, subject.split("."), 0, _Found(found, limit))
        return found[:limit] if limit is not None else found

    def _walk(self, node: _Node, tokens: list[str], i: int, found: _Found) -> None:
        found.extend(node.tails)  # '>' filed here takes any rest of one token or more
        token = tokens[i]
        if token == ">":
            self._everything_below(node, found)
            return
        last = i == len(tokens) - 1
        candidates = (
            node.children.items()
            if token == "*"
            else (
                (t, c)
                for t, c in ((token, node.children.get(token)), ("*", node.children.get("*")))
                if c is not None
            )
        )
        for _, child in candidates:
            if last:
                found.extend(child.ends)
            else:
                self._walk(child, tokens, i + 1, found)

    def _everything_below(self, node: _Node, found: _Found) -> None:
        for child in node.children.values():
            found.extend(child.ends)
            found.extend(child.tails)
            self._everything_below(child, found)
