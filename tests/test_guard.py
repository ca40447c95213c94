"""The pure pieces behind the worker's liveness rules, on an injected clock:
`guard.WriteGuard` (updates per window), `causes` (when a permanent failure
may have changed), and `backoff.Backoff`'s one-shot re-checks and holds.
`test_worker` runs them inside the worker against a real broker."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kanade_watchdog.config.load import parse
from kanade_watchdog.core import causes
from kanade_watchdog.core.plan import Observed
from kanade_watchdog.daemon.backoff import Backoff
from kanade_watchdog.daemon.guard import WriteGuard
from kanade_watchdog.model.errors import ApiError, ResourceError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=30.0), st.booleans()), max_size=200
    ),
    limit=st.integers(min_value=1, max_value=8),
)
def test_no_window_ever_holds_more_updates_than_the_limit(
    steps: list[tuple[float, bool]], limit: int
) -> None:
    """Whatever the timing of the attempts, and whether refusals are recorded
    as holds, no span of `window` seconds contains more than `limit` allowed
    updates; once held (and not seen in sync), at most one per window."""
    clock, window = Clock(), 60.0
    guard = WriteGuard(clock, limit=limit, window=window)
    writes: list[float] = []
    held_since: float | None = None
    for dt, record_hold in steps:
        clock.now += dt
        if guard.allows("S"):
            assert guard.reopens_in("S") == 0.0
            guard.wrote("S")
            writes.append(clock.now)
        else:
            assert guard.reopens_in("S") > 0.0
            if record_hold:
                guard.hold("S")
                held_since = clock.now if held_since is None else held_since
    for i, start in enumerate(writes):
        in_window = [t for t in writes[i:] if t - start < window]
        assert len(in_window) <= limit
        if held_since is not None and start > held_since:
            assert len(in_window) == 1


def test_hold_says_first_once_per_episode_and_converged_ends_it() -> None:
    """The first refusal of an episode is the one worth an ERROR; seeing the
    resource in sync ends the episode (the full allowance comes back)."""
    clock = Clock()
    guard = WriteGuard(clock, limit=2, window=10.0)
    guard.wrote("S")
    guard.wrote("S")
    assert not guard.allows("S")
    assert guard.hold("S") is True
    assert guard.hold("S") is False
    assert guard.reopens_in("S") == 10.0
    clock.now = 10.0
    assert guard.allows("S")
    guard.wrote("S")
    assert not guard.allows("S")  # held before: one per window now
    guard.converged("S")
    assert guard.allows("S")
    assert guard.hold("S") is True


def test_recheck_is_one_shot_and_outlives_a_success() -> None:
    """A re-check fires once its time has come, whatever succeeded meanwhile
    (the advisory of our own write may be read before the change it is for),
    and counts in next_due; a hold (defer) makes the key not due until then."""
    clock = Clock()
    backoff = Backoff(initial=0.1, maximum=1.0, permanent=60.0, clock=clock)
    backoff.recheck("S", 0.15)
    assert backoff.next_due() == 0.15
    backoff.succeeded("S")
    assert backoff.pop_checks() == []
    clock.now = 0.15
    assert backoff.pop_checks() == ["S"]
    assert backoff.pop_checks() == []
    assert backoff.next_due() is None
    backoff.defer("S", 30.0)
    assert not backoff.due("S")
    assert backoff.waiting() == ["S"]
    clock.now = 30.15
    assert backoff.pop_due() == ["S"]


def _view(**streams: dict[str, object]) -> dict[str, Observed]:
    return {name: Observed(config={"name": name, **cfg}) for name, cfg in streams.items()}


def _overlap_error(related: tuple[str, ...]) -> ResourceError:
    api = ApiError(code=400, err_code=10065, description="subjects overlap", subject="x")
    return ResourceError("INVENTORY", "its subjects overlap ...", cause=api, related=related)


CONFIG = parse(
    {"streams": {"INVENTORY": {"subjects": ["inventory.>"]}, "BIG": {"subjects": ["big.>"]}}},
    "test.toml",
)
INVENTORY, BIG = CONFIG.resources


def test_an_overlap_changes_when_the_overlapping_stream_does() -> None:
    """An overlap is judged on the streams that overlap and those named: the
    same view is no change; narrowing, widening or deleting them is."""
    widened = _view(NOTIFICATIONS={"subjects": ["notifications.>", "inventory.>"]})
    cause = causes.cause_of(INVENTORY, _overlap_error(("NOTIFICATIONS",)), widened)
    assert not causes.changed(INVENTORY, cause, widened)
    assert not causes.changed(INVENTORY, cause, {**widened, **_view(OTHER={"subjects": ["o"]})})
    narrowed = _view(NOTIFICATIONS={"subjects": ["notifications.>"]})
    assert causes.changed(INVENTORY, cause, narrowed)
    assert causes.changed(INVENTORY, cause, {})
    assert causes.overlapping(INVENTORY, widened) == ["NOTIFICATIONS"]


def test_an_overlap_named_but_not_in_the_view_is_decided_by_the_next_full_pass() -> None:
    """The broker named an overlapping stream the (older) view does not show
    overlapping: the cause is unknown, so the next full pass retries."""
    stale = _view(NOTIFICATIONS={"subjects": ["notifications.>"]})
    cause = causes.cause_of(INVENTORY, _overlap_error(("NOTIFICATIONS",)), stale)
    assert cause.seen is None
    assert causes.changed(INVENTORY, cause, stale)


def test_out_of_storage_changes_when_the_reservations_do() -> None:
    """10047 depends on what capped streams reserve: a capped stream deleted
    or shrunk is a change; an uncapped one coming or going is not."""
    api = ApiError(code=500, err_code=10047, description="insufficient storage", subject="x")
    error = ResourceError("BIG", "cannot reserve", cause=api)
    view = _view(CAPPED={"max_bytes": 100, "storage": "file"}, PLAIN={"max_bytes": -1})
    cause = causes.cause_of(BIG, error, view)
    assert not causes.changed(BIG, cause, {k: v for k, v in view.items() if k != "PLAIN"})
    assert causes.changed(BIG, cause, {k: v for k, v in view.items() if k != "CAPPED"})
    smaller = {**view, **_view(CAPPED={"max_bytes": 50, "storage": "file"})}
    assert causes.changed(BIG, cause, smaller)
    memory = {**view, **_view(MEM={"max_bytes": 100, "storage": "memory"})}
    assert not causes.changed(BIG, cause, memory)
