"""The in-sync decisions of earlier passes, kept while nothing they depend on changed.

At 10,000 declared resources a resync decides every one of them, and
almost all are in sync, as they were 30 s before. An in-sync decision
depends only on the declared resource, the stream's config as the broker
reports it, and the connected server (a field it lacks blocks the
resource); not on the stream's state, the clock, or the specs this process
wrote before (those weigh only when something differs). So when the
declared resource is equal (a reload that left it alone counts: an operator
reloading a 10,000-resource file to change one is the common case), the
server is the same and the config reported is equal to the one decided on,
the kept decision is the answer, and the planner is not asked again:
comparing two mappings costs a fraction of planning one. Anything else goes
to the planner, and only its in-sync answers are kept.

The worker also asks `unchanged` first: a resource whose kept in-sync
decision still holds, and whose last reported outcome was that decision
(the worker `forget`s a resource that failed or was held since), is not
reported again at all: the reporters already say "in sync" for it, and a
resync at 10,000 resources then hands them the few that changed instead of
10,000 outcomes to book on the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
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

    def unchanged(
        self, res: Resource, observed: Observed | None, server: ServerInfo | None
    ) -> bool:
        """The kept in-sync decision of `res` still holds for what was observed."""
        if observed is None or observed.leaderless:
            return False
        kept = self._kept.get(res.stream)
        if kept is None:
            return False
        was, config, on, decision = kept
        if on == server and config == observed.config and was == res:
            # Keep the config just seen, the one the worker's view holds now:
            # the older copy goes (at 10,000 streams, ~18 MiB).
            self._kept[res.stream] = (res, observed.config, server, decision)
            return True
        return False

    def decide(
        self,
        res: Resource,
        observed: Observed | None,
        server: ServerInfo | None,
        planner: Callable[[Resource, Observed | None], Decision],
    ) -> Decision:
        """`planner(res, observed)`, or the in-sync decision it gave last time
        for the same resource, server and config."""
        if self.unchanged(res, observed, server):
            return self._kept[res.stream][3]
        decision = planner(res, observed)
        if decision.action is Action.IN_SYNC and observed is not None and not observed.leaderless:
            self._kept[res.stream] = (res, observed.config, server, decision)
        else:
            self._kept.pop(res.stream, None)
        return decision

    def forget(self, stream: str) -> None:
        """`stream`'s last outcome was not its kept decision (a failure, a hold)."""
        self._kept.pop(stream, None)

    def keep_only(self, streams: Collection[str]) -> None:
        """A reload: what is no longer declared goes (declared again later, it
        must be reported again, not taken as unchanged)."""
        self._kept = {s: kept for s, kept in self._kept.items() if s in streams}

    def clear(self) -> None:
        self._kept.clear()
