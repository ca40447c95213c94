"""What the broker holds that a file does not declare (plan, check, STATUS).

Apart from `export`, which needs much more of the broker's shapes: `plan`
and `check` start often, and importing the whole exporter for these few
lines cost them a few milliseconds each (tests/test_cli_imports.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase

from kanade_watchdog.model.resources import STREAM_PREFIX, Kind
from kanade_watchdog.model.subjects import bucket_name_problem


def matches(globs: Sequence[str], *names: str) -> bool:
    """Any of `names` matches any glob; no globs match everything."""
    return not globs or any(fnmatchcase(n, g) for g in globs for n in names)


def kind_of_stream(stream: str) -> tuple[Kind, str]:
    """(kind, name) judged from a stream name alone: `KV_<b>` and `OBJ_<b>`
    with a valid bucket name are taken for buckets."""
    for kind in (Kind.KV, Kind.OBJECT_STORE):
        prefix = STREAM_PREFIX[kind]
        if stream.startswith(prefix) and not bucket_name_problem(stream[len(prefix) :]):
            return kind, stream[len(prefix) :]
    return Kind.STREAM, stream


def undeclared(
    declared_streams: set[str],
    observed_names: Iterable[str],
    ignore_globs: Sequence[str] = (),
) -> list[tuple[Kind, str]]:
    """(kind, name) of every stream on the broker that no declared resource
    is backed by, sorted by stream name, except those an `ignore` glob
    matches (by resource name or by stream name)."""
    out: list[tuple[Kind, str]] = []
    for stream in sorted(set(observed_names) - declared_streams):
        kind, name = kind_of_stream(stream)
        if ignore_globs and matches(ignore_globs, name, stream):
            continue
        out.append((kind, name))
    return out
