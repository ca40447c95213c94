"""The consumer planner's decision table: create (plain and resumed), update
laid over the observed config, in_sync for undeclared settings, blocked for
what the server cannot change in place, newer_spec under the marker; and the
resume position's rules."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kanade_watchdog.core import consumer_desired as cd
from kanade_watchdog.core import desired
from kanade_watchdog.core.consumer_plan import IMMUTABLE, decide
from kanade_watchdog.core.plan import Action
from kanade_watchdog.core.position import Position, observe, resume_from
from kanade_watchdog.model.consumers import Consumer

S = 1_000_000_000


def consumer(**declared: Any) -> Consumer:
    return Consumer(stream="S", durable="c", declared=declared, spec_version=2, writer="w")


def broker_config(**fields: Any) -> dict[str, Any]:
    """A consumer config as nats-server reports one, with its own defaults."""
    base: dict[str, Any] = {
        "durable_name": "c",
        "name": "c",
        "deliver_policy": "all",
        "ack_policy": "explicit",
        "ack_wait": 30 * S,
        "max_deliver": -1,
        "replay_policy": "instant",
        "max_waiting": 512,
        "max_ack_pending": 1000,
        "num_replicas": 0,
        "metadata": {"_nats.ver": "2.15.1"},
    }
    base.update(fields)
    return base


def test_missing_is_created_with_exactly_the_declared_fields_and_the_marker() -> None:
    """A create sends the declared fields, the durable name and the marker, nothing else."""
    c = consumer(ack_policy="explicit", filter_subjects=("s.a", "s.b"), ack_wait=5 * S)
    d = decide(c, None)
    assert d.action is Action.CREATE
    assert d.api_action == "create"
    assert d.send is not None
    send = dict(d.send)
    meta = send.pop("metadata")
    assert send == {
        "durable_name": "c",
        "ack_policy": "explicit",
        "filter_subjects": ["s.a", "s.b"],
        "ack_wait": 5 * S,
    }
    assert meta == cd.marker(c)
    assert meta[desired.SPEC_VERSION_KEY] == "2"


def test_a_lost_consumer_is_created_at_its_resume_position() -> None:
    """With a kept position the create starts by sequence there and records it."""
    c = consumer(deliver_policy="new", ack_policy="explicit")
    d = decide(c, None, resume_from=61)
    assert d.action is Action.CREATE
    assert d.resume_from == 61
    assert d.send is not None
    assert d.send["deliver_policy"] == "by_start_sequence"
    assert d.send["opt_start_seq"] == 61
    assert d.send["metadata"][cd.RESUMED_KEY] == "61"


def test_resume_false_applies_the_declared_deliver_policy() -> None:
    """The per-consumer setting turns the resume off."""
    c = Consumer(stream="S", durable="c", declared={"deliver_policy": "new"}, resume=False)
    d = decide(c, None, resume_from=61)
    assert d.resume_from is None
    assert d.send is not None
    assert d.send["deliver_policy"] == "new"
    assert "opt_start_seq" not in d.send


def test_a_resumed_consumer_is_in_sync_with_its_declared_deliver_policy() -> None:
    """Its by_start_sequence start is the resume, not drift (and no loop)."""
    c = consumer(deliver_policy="new", ack_policy="explicit")
    sent = decide(c, None, resume_from=61).send
    assert sent is not None
    assert decide(c, broker_config(**sent)).action is Action.IN_SYNC


def test_an_application_consumer_with_other_settings_is_in_sync() -> None:
    """Only declared fields are compared: everything else the app chose stays its own."""
    c = consumer(ack_policy="explicit", max_deliver=-1)
    observed = broker_config(max_ack_pending=7, description="app's", metadata={"team": "x"})
    assert decide(c, observed).action is Action.IN_SYNC


def test_drift_is_an_update_laid_over_the_observed_config() -> None:
    """An update keeps the app's fields and replaces only the declared ones."""
    c = consumer(ack_wait=5 * S, filter_subject="s.a", metadata=(("k", "v"),))
    observed = broker_config(
        ack_wait=9 * S,
        filter_subjects=["s.x", "s.y"],
        description="app's",
        metadata={"other": "1", desired.WRITER_KEY: "old"},
    )
    d = decide(c, observed)
    assert d.action is Action.UPDATE
    assert d.api_action == "update"
    assert {ch.field for ch in d.changes} == {"ack_wait", "filter_subject", "metadata"}
    assert d.send is not None
    assert d.send["ack_wait"] == 5 * S
    assert d.send["filter_subject"] == "s.a"
    assert "filter_subjects" not in d.send
    assert d.send["description"] == "app's"
    assert d.send["metadata"]["other"] == "1"
    assert d.send["metadata"]["k"] == "v"
    assert d.send["metadata"][desired.WRITER_KEY] == "w"
    # what was sent reads back in sync: the daemon's own update causes no loop
    assert decide(c, broker_config(**d.send)).action is Action.IN_SYNC


def test_one_filter_as_a_list_matches_the_single_spelling() -> None:
    """The broker may hold a one-element filter list as filter_subject."""
    c = consumer(filter_subjects=("s.a",))
    assert decide(c, broker_config(filter_subject="s.a")).action is Action.IN_SYNC


@pytest.mark.parametrize(
    ("field", "declared", "observed"),
    [
        ("deliver_policy", "new", "all"),
        ("ack_policy", "all", "explicit"),
        ("replay_policy", "original", "instant"),
        ("mem_storage", True, False),
        ("max_waiting", 10, 512),
        ("opt_start_seq", 5, 1),
        ("pause_until", "2030-01-01T00:00:00Z", None),
    ],
)
def test_an_immutable_difference_is_blocked_and_nothing_is_sent(
    field: str, declared: Any, observed: Any
) -> None:
    """What the server cannot change in place is blocked with its reason; no delete."""
    extra = {"deliver_policy": "by_start_sequence"} if field == "opt_start_seq" else {}
    c = consumer(**{field: declared}, **extra)
    obs = broker_config(**{field: observed}, **extra)
    d = decide(c, obs)
    assert d.action is Action.BLOCKED
    assert d.send is None
    assert not d.writes
    assert IMMUTABLE[field] in d.reason


def test_push_and_pull_cannot_turn_into_each_other() -> None:
    """A pull declaration over a push consumer, and the other way, is blocked."""
    pull = consumer(ack_policy="explicit")
    push = consumer(deliver_subject="d")
    assert decide(pull, broker_config(deliver_subject="x")).action is Action.BLOCKED
    assert decide(push, broker_config()).action is Action.BLOCKED
    d = decide(push, broker_config(deliver_subject="e"))
    assert d.action is Action.UPDATE  # another deliver subject is an update


def test_a_newer_spec_is_left_alone_unless_forced() -> None:
    """A marker with a higher spec_version owns the consumer now."""
    c = consumer(ack_wait=5 * S)
    observed = broker_config(metadata={**cd.marker(c), desired.SPEC_VERSION_KEY: "3"})
    assert decide(c, observed).action is Action.NEWER_SPEC
    forced = Consumer(stream="S", durable="c", declared={"ack_wait": 5 * S}, force_spec=True)
    assert decide(forced, observed).action is Action.UPDATE


def test_no_decision_ever_deletes() -> None:
    """The only API actions are create and update."""
    for d in (decide(consumer(), None), decide(consumer(ack_wait=S), broker_config())):
        assert d.api_action in ("create", "update")


@given(
    ack_wait=st.integers(1, 10**12),
    max_deliver=st.integers(1, 100) | st.just(-1),
    observed_wait=st.integers(1, 10**12),
    description=st.text(max_size=20),
)
def test_whatever_an_update_sends_reads_back_in_sync(
    ack_wait: int, max_deliver: int, observed_wait: int, description: str
) -> None:
    """Property: create or update, the config sent plans in sync afterwards."""
    c = consumer(ack_wait=ack_wait, max_deliver=max_deliver, description=description)
    for observed in (None, broker_config(ack_wait=observed_wait)):
        d = decide(c, observed)
        if d.send is not None:
            assert decide(c, broker_config(**d.send)).action is Action.IN_SYNC


def test_the_resume_position_is_the_ack_floor_plus_one() -> None:
    """Ack floor + 1; none without an observation, an ack, or with another stream."""
    kept = observe({"ack_floor": {"stream_seq": 60, "consumer_seq": 60}}, "t1")
    assert kept == Position(60, "t1")
    assert resume_from(kept, stream_created="t1", stream_last_seq=100) == 61
    assert resume_from(None, stream_last_seq=100) is None
    assert resume_from(Position(0), stream_last_seq=100) is None
    assert resume_from(kept, stream_created="t2", stream_last_seq=100) is None
    assert resume_from(kept, stream_created="t1", stream_last_seq=0) is None
