"""The in-sync decisions of earlier passes, kept while nothing they depend on changed.

At 10,000 declared resources a resync decides every one of them, and
almost all are in sync, as they were 30 s before. An in-sync decision
depends only on the declared resource, the stream's config as the broker
reports it, and the connected server (a field it lacks blocks the
resource); not on the stream's state, the clock, or the specs this process
wrote before (those weigh only when something differs). So when the
resource is the same object (a reload makes new ones), the server is the
same and the config reported is equal to the one decided on, the kept
decision is the answer, and the planner is not asked again: comparing two
config mappings costs a fraction of planning one. Anything else goes to the
planner, and only its in-sync answers are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from kanade_watchdog.core.plan import Action, Decision, Observed
from kanade_watchdog.core.serverinfo import ServerInfo
from kanade_watchdog.model.resources import Resource


class InSyncMemo:
    def __init__(self) -> None:
        # stream -> (the resource, the config it was decided on, the server, the decision)
        self._kept: dict[str, tuple[Resource, Mapping[str, Any], ServerInfo | None, Decision]] = {}

    def __len__(self) -> int:
        return len(self._kept)

    def decide(
        self,
        res: Resource,
        observed: Observed | None,
        server: ServerInfo | None,
        planner: Callable[[Resource, Observed | None], Decision],
    ) -> Decision:
        """`planner(res, observed)`, or the in-sync decision it gave last time
        for the same resource, server and config."""
        if observed is not None and not observed.leaderless:
            kept = self._kept.get(res.stream)
            if kept is not None:
                was, config, on, decision = kept
                if on == server and config == observed.config and was == res:
                    # Keep the config just seen, the one the worker's view holds
                    # now: the older copy goes (at 10,000 streams, ~18 MiB).
                    self._kept[res.stream] = (res, observed.config, server, decision)
                    return decision
        decision = planner(res, observed)
        if decision.action is Action.IN_SYNC and observed is not None and not observed.leaderless:
            self._kept[res.stream] = (res, observed.config, server, decision)
        else:
            self._kept.pop(res.stream, None)
        return decision

    def clear(self) -> None:
        self._kept.clear()
