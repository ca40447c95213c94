"""Checks across resources: one stream name per resource, no two declared
streams capturing the same subject (what the broker refuses with 10065)."""

from __future__ import annotations

from kanade_watchdog.config import fieldchecks, streamfields
from kanade_watchdog.config.problems import Problems
from kanade_watchdog.config.problems import key as _key
from kanade_watchdog.model.resources import SECTION, Kind, Resource, identity_subjects
from kanade_watchdog.model.subjects import SubjectIndex


def declared_subjects(resource: Resource) -> tuple[str, ...]:
    if "mirror" in resource.declared:  # a mirror listens on no subjects
        return ()
    if resource.kind is not Kind.STREAM:
        return identity_subjects(resource.kind, resource.name)
    # A stream whose subjects are invalid has none here: they are reported already.
    subjects: tuple[str, ...] = resource.declared.get("subjects", ())
    return subjects


def _serves_direct(resource: Resource) -> bool:
    """A declared origin answers direct gets: buckets always (ADR-8, ADR-20)."""
    return resource.kind is not Kind.STREAM or bool(resource.declared.get("allow_direct"))


def cross_checks(problems: Problems, resources: list[Resource]) -> None:
    """Names and subjects must be unique across every declared stream."""
    owner: dict[str, Resource] = {}
    for res in resources:
        other = owner.get(res.stream)
        if other is not None:
            problems.add(
                f"{SECTION[res.kind]}.{_key(res.name)}",
                f"its stream {res.stream!r} is already declared by "
                f"{SECTION[other.kind]}.{_key(other.name)}",
                kind=f"{SECTION[res.kind]}.*",
            )
        owner[res.stream] = res
    for stream, key, reason in fieldchecks.topology_problems(
        {r.stream: streamfields.with_implied(r.kind, r.declared) for r in resources},
        lambda s: _serves_direct(owner[s]),
    ):
        res = owner[stream]
        problems.add(f"{SECTION[res.kind]}.{_key(res.name)}.{key}", reason, kind="topology")
    index = SubjectIndex()
    claimed_by: dict[str, Resource] = {}
    for res in resources:
        subjects = declared_subjects(res)
        # One line per resource, naming the first overlap found: listing every
        # pair would be n * n lines for n streams that all overlap.
        for subject in subjects:
            found = index.overlapping(subject, limit=1)
            if found:
                other = claimed_by[found[0]]
                problems.add(
                    f"{SECTION[res.kind]}.{_key(res.name)}.subjects",
                    f"{subject!r} overlaps {found[0]!r} of "
                    f"{SECTION[other.kind]}.{_key(other.name)}",
                    kind=f"{SECTION[res.kind]}.*.subjects",
                )
                break
        for subject in subjects:  # a stream's own subjects were checked by _subjects
            if subject not in claimed_by:
                index.add(subject)
                claimed_by[subject] = res
