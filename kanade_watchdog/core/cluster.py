"""Cluster facts an operator needs, read from the stream list. Pure.

On a clustered broker each stream reports its leader and its replicas; a
stream whose leader is gone is listed by name only. `check` turns these
into CRITICAL (no leader) and WARNING (replicas behind); the daemon's
STATUS line carries them too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from kanade_watchdog.core.plan import Observed
from kanade_watchdog.model.resources import Resource


@dataclass(frozen=True)
class ClusterFacts:
    leaderless: list[str] = field(default_factory=list)  # labels
    behind: list[str] = field(default_factory=list)  # "label current/declared"


def cluster_facts(resources: Iterable[Resource], observed: Mapping[str, Observed]) -> ClusterFacts:
    facts = ClusterFacts()
    for res in resources:
        obs = observed.get(res.stream)
        if obs is None:
            continue
        if obs.leaderless or (obs.cluster and not obs.cluster.get("leader")):
            facts.leaderless.append(res.label)
            continue
        if not obs.cluster:
            continue
        wanted = int(obs.config.get("num_replicas", 1) or 1)
        peers = obs.cluster.get("replicas") or []
        current = 1 + sum(1 for p in peers if p.get("current") and not p.get("offline"))
        if current < wanted:
            facts.behind.append(f"{res.label} {current}/{wanted}")
    return facts
