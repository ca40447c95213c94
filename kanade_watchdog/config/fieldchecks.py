"""What the broker refuses in a declaration, found before any traffic.

Pure. `check` looks at one resource's declared fields together (a mirror
with subjects or sources, a stream sourcing itself, a delete-marker TTL
without message TTLs, a counter stream with TTLs...), `topology_problems`
across resources (cycles of mirrors and sources, a mirror of a direct-get
origin without `mirror_direct`). Each rule was seen refused by nats-server
2.15.1; `config` turns what they return into one problem line each, with the
key path and the value as written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kanade_watchdog.config.sources import local, origins
from kanade_watchdog.model.subjects import subjects_overlap

Problem = tuple[str, str]  # (key, what is wrong)


def check(stream: str, declared: Mapping[str, Any], raw: Mapping[str, Any]) -> list[Problem]:
    """What the broker refuses in one declaration of stream `stream` (any
    kind), as (key, reason); `declared` holds what parsed, `raw` what was
    written."""
    out: list[Problem] = []

    def bad(key: str, reason: str) -> None:
        out.append((key, reason))

    mirror = declared.get("mirror")
    if "mirror" in raw:  # checked even when the mirror itself has a problem
        if "subjects" in raw:
            bad("subjects", "a mirror has no subjects of its own: it holds what its origin holds")
        if "sources" in raw:
            bad("sources", "a mirror cannot also have sources")
        for key, what in (
            ("first_seq", "a mirror starts where its origin does"),
            ("subject_delete_marker_ttl", "the broker forbids delete markers on a mirror"),
            ("limit_marker_ttl", "the broker forbids delete markers on a mirror"),
            ("allow_msg_counter", "a mirror cannot count"),
            ("allow_atomic", "a mirror takes no atomic publishes"),
            ("allow_msg_schedules", "a mirror schedules no messages"),
        ):
            if key in raw and (key not in declared or declared[key]):
                bad(key, f"is not for a mirror: {what}")
        if mirror is not None and mirror["name"] == stream and local(mirror):
            bad("mirror", f"it cannot mirror itself ({stream})")
    elif declared.get("mirror_direct"):
        bad("mirror_direct", "only a mirror serves direct gets for its origin (declare mirror)")
    for source in declared.get("sources") or ():
        if source["name"] == stream and local(source):
            bad("sources", f"it cannot source itself ({stream})")
            break
    out += _ttl_checks(declared, raw)
    return out


def _ttl_checks(declared: Mapping[str, Any], raw: Mapping[str, Any]) -> list[Problem]:
    out: list[Problem] = []

    def bad(key: str, reason: str) -> None:
        out.append((key, reason))

    if declared.get("subject_delete_marker_ttl"):
        if not declared.get("allow_msg_ttl"):
            bad("subject_delete_marker_ttl", "needs allow_msg_ttl = true (a marker expires by TTL)")
        if not declared.get("allow_rollup_hdrs"):
            bad("subject_delete_marker_ttl", "needs allow_rollup_hdrs = true (the broker says so)")
    if declared.get("discard_new_per_subject"):
        if declared.get("discard") != "new":
            bad("discard_new_per_subject", 'needs discard = "new"')
        if int(declared.get("max_msgs_per_subject", -1)) <= 0:
            bad("discard_new_per_subject", "needs a max_msgs_per_subject limit")
    if declared.get("allow_msg_counter"):
        for key, wrong, why in (
            ("allow_msg_ttl", True, "message TTLs"),
            ("discard", "new", 'discard = "new"'),
            ("allow_msg_schedules", True, "message schedules"),
        ):
            if declared.get(key) == wrong:
                bad("allow_msg_counter", f"a counter stream cannot use {why}")
        if declared.get("retention", "limits") != "limits":
            bad("allow_msg_counter", 'a counter stream keeps retention = "limits"')
    if declared.get("allow_msg_schedules") and not declared.get("allow_rollup_hdrs"):
        bad("allow_msg_schedules", "needs allow_rollup_hdrs = true (the broker says so)")
    republish_to = declared.get("republish")
    if republish_to is not None:
        for subject in declared.get("subjects") or ():
            if subjects_overlap(republish_to["dest"], subject):
                bad(
                    "republish",
                    f"dest {republish_to['dest']!r} overlaps the stream's own subject "
                    f"{subject!r}: a cycle (the broker refuses it)",
                )
                break
    return out


def topology_problems(
    streams: Mapping[str, Mapping[str, Any]], allow_direct: Callable[[str], bool]
) -> list[tuple[str, str, str]]:
    """Across declarations (stream name -> declared, implied fields included):
    cycles of mirrors and sources, and mirrors of a direct-get origin without
    `mirror_direct`. (stream, key, reason) per problem; `allow_direct(origin)`
    says whether a declared origin serves direct gets."""
    out: list[tuple[str, str, str]] = []
    edges = {
        name: [o for o in origins(d) if o in streams and o != name] for name, d in streams.items()
    }
    seen_cycles: set[frozenset[str]] = set()
    for start in streams:
        path = _cycle_from(start, edges)
        if path and frozenset(path) not in seen_cycles:
            seen_cycles.add(frozenset(path))
            key = "mirror" if "mirror" in streams[start] else "sources"
            cycle = " -> ".join([*path, path[0]])
            out.append((start, key, f"{cycle} is a cycle (the broker refuses it)"))
    for name, declared in streams.items():
        mirror = declared.get("mirror")
        if (
            isinstance(mirror, Mapping)
            and local(mirror)
            and mirror["name"] in streams
            and allow_direct(str(mirror["name"]))
            and not declared.get("mirror_direct")
        ):
            out.append(
                (
                    name,
                    "mirror_direct",
                    f"its origin {mirror['name']} serves direct gets (allow_direct): a mirror of "
                    "it needs mirror_direct = true (the broker refuses it otherwise)",
                )
            )
    return out


def _cycle_from(start: str, edges: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A cycle through `start`, as the list of its streams, or None."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    visited: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in edges.get(node, ()):
            if nxt == start:
                return path
            if nxt not in visited:
                visited.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None
