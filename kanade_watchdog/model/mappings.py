"""Subject mappings (transforms) checked the way nats-server checks them.

Pure. A stream's `subject_transform`, `republish` and each source's or
mirror's `subject_transforms` map a source filter to a destination. The
server refuses a destination that is not a valid mapping of its source
(measured on nats-server 2.15.1): a `*` token in the destination, a `>` in
one and not the other, an empty token, whitespace, an unknown mapping
function, a function with the wrong number of arguments, or a wildcard
index beyond the source's `*` tokens. `sources` reports these as config
problems, before any traffic.
"""

from __future__ import annotations

import re

from kanade_watchdog.model.subjects import subject_problem

# Mapping functions and how many arguments each takes (min, max; None: any).
# `wildcard` is also written `$n` (the legacy form).
_FUNCTIONS: dict[str, tuple[int, int | None]] = {
    "wildcard": (1, 1),
    "partition": (1, None),
    "split": (2, 2),
    "splitfromleft": (2, 2),
    "splitfromright": (2, 2),
    "slicefromleft": (2, 2),
    "slicefromright": (2, 2),
    "left": (2, 2),
    "right": (2, 2),
    "random": (1, 1),
}
# Which arguments are wildcard indexes (checked against the source's `*`s).
_INDEX_ARGS: dict[str, slice] = {
    "wildcard": slice(0, 1),
    "partition": slice(1, None),
    "split": slice(0, 1),
    "splitfromleft": slice(0, 1),
    "splitfromright": slice(0, 1),
    "slicefromleft": slice(0, 1),
    "slicefromright": slice(0, 1),
    "left": slice(0, 1),
    "right": slice(0, 1),
}
_FUNCTION = re.compile(r"\{\{\s*([A-Za-z]+)\s*\((.*)\)\s*\}\}", re.S)
_LEGACY = re.compile(r"\$(\d+)")
_MUSTACHES = re.compile(r"\{\{.*?\}\}", re.S)


def _tokens(dest: str) -> list[str]:
    """`dest` split at its dots, except dots inside a mapping function's braces."""
    tokens: list[str] = []
    current, depth, i = "", 0, 0
    while i < len(dest):
        pair = dest[i : i + 2]
        if pair in ("{{", "}}"):
            depth = depth + 1 if pair == "{{" else max(depth - 1, 0)
            current += pair
            i += 2
            continue
        if dest[i] == "." and depth == 0:
            tokens.append(current)
            current = ""
        else:
            current += dest[i]
        i += 1
    tokens.append(current)
    return tokens


def _token_problem(token: str, wildcards: int) -> str | None:
    if token.startswith("{{") and token.endswith("}}") and token != "{{}}":
        match = _FUNCTION.fullmatch(token)
        if match is None:
            return f"{token!r} is not a mapping function like {{{{wildcard(1)}}}}"
        name, args_text = match.group(1).lower(), match.group(2)
        if name not in _FUNCTIONS:
            return f"{token!r}: unknown mapping function {match.group(1)!r}"
        args = [a.strip() for a in args_text.split(",")] if args_text.strip() else []
        low, high = _FUNCTIONS[name]
        if len(args) < low or (high is not None and len(args) > high):
            wanted = str(low) if low == high else f"at least {low}"
            return f"{token!r}: {name} takes {wanted} argument{'s' if wanted != '1' else ''}"
        for arg in args[_INDEX_ARGS.get(name, slice(0, 0))]:
            if not re.fullmatch(r"-?\d+", arg):
                return f"{token!r}: {arg!r} is not a wildcard number"
            if int(arg) > wildcards:
                return _index_problem(token, int(arg), wildcards)
        return None
    legacy = _LEGACY.fullmatch(token)
    if legacy and int(legacy.group(1)) > wildcards:
        return _index_problem(token, int(legacy.group(1)), wildcards)
    return None


def _index_problem(token: str, index: int, wildcards: int) -> str:
    have = f"only {wildcards}" if wildcards else "no"
    return f"{token!r} refers to wildcard {index}, but the source has {have} '*' token" + (
        "s" if wildcards != 1 else ""
    )


def source_problem(src: str) -> str | None:
    """Why `src` is not a subject filter a mapping can start from."""
    problem = subject_problem(src)
    return f"{src!r} {problem}" if problem else None


def destination_problem(src: str, dest: str) -> str | None:
    """Why `dest` is not a valid mapping of `src`, or None. An empty `src`
    stands for every subject (`>`)."""
    if not dest.isprintable() or any(ch.isspace() for ch in _MUSTACHES.sub("", dest)):
        return "must not contain whitespace or control characters"
    source = src or ">"
    tokens = _tokens(dest)
    if any(not t for t in tokens):
        return "has an empty token (leading, trailing or double '.')"
    if "*" in tokens:
        return "a destination has no '*' token (write {{wildcard(1)}} for the first '*' of src)"
    if ">" in tokens[:-1]:
        return "'>' may only be the last token"
    src_tail = source.split(".")[-1] == ">"
    dest_tail = tokens[-1] == ">"
    if src_tail != dest_tail:
        return (
            "ends in '>' but src does not" if dest_tail else f"must end in '>' like src {source!r}"
        )
    wildcards = source.split(".").count("*")
    for token in tokens:
        problem = _token_problem(token, wildcards)
        if problem:
            return problem
    return None
