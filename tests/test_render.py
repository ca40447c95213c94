"""What plan, apply and check print, as pure formatting: values quoted alike in
every diff, at-stake effects told in the past tense once written, counts and
times that read well, and a check status text that names every problem."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kanade_watchdog.core.cluster import ClusterFacts
from kanade_watchdog.core.plan import Action, Change, Decision, Observed, Stake, decide
from kanade_watchdog.model.printable import quote
from kanade_watchdog.model.resources import Kind, Resource
from kanade_watchdog.report import check, render

NOW = datetime(2026, 1, 1, 12, 0, 0)
SEC = 10**9
DAY = 86_400 * SEC
MIB = 1024**2
KIB = 1024

# A stream as nats-server 2.15.1 reports it (the fields the planner reads).
BROKER: dict[str, Any] = {
    "name": "S1",
    "subjects": ["s1.>"],
    "retention": "limits",
    "max_msgs": -1,
    "max_bytes": -1,
    "max_age": 0,
    "max_msgs_per_subject": -1,
    "max_msg_size": -1,
    "discard": "old",
    "storage": "file",
    "num_replicas": 1,
    "duplicate_window": 120 * SEC,
    "metadata": {"_nats.req.level": "0"},
}


def stream(name: str = "S1", **declared: Any) -> Resource:
    return Resource(Kind.STREAM, name, {"subjects": ("s1.>",), **declared})


def filled(messages: int, size: int, **config: Any) -> Observed:
    first = (NOW - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.123456789Z")
    state = {"messages": messages, "bytes": size, "first_ts": first}
    return Observed(config={**BROKER, **config}, state=state)


# --- every diff quotes text alike ----------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "text"),
    [
        (Change("discard", "old", "new"), 'discard: "old" -> "new"'),
        (Change("retention", "limits", "interest"), 'retention: "limits" -> "interest"'),
        (Change("description", None, "orders"), 'description: unset -> "orders"'),
        (Change("subjects", ("a.>",), ("a.>", "b")), 'subjects: ["a.>"] -> ["a.>", "b"]'),
        (Change("metadata", (), (("owner", "ops"),)), 'metadata: {} -> {owner="ops"}'),
        (
            Change(
                "placement",
                (("cluster", ""), ("tags", ())),
                (("cluster", "c1"), ("tags", ("ssd",))),
            ),
            'placement: {cluster="", tags=[]} -> {cluster="c1", tags=["ssd"]}',
        ),
        (Change("max_age", DAY, 30 * DAY), "max_age: 1d -> 30d"),
        (Change("max_bytes", -1, 512 * MIB), "max_bytes: unlimited -> 512MiB"),
        (Change("max_msgs", -1, 600), "max_msgs: unlimited -> 600"),
        (Change("deny_delete", True, False), "deny_delete: true -> false"),
    ],
    ids=lambda v: v.field if isinstance(v, Change) else None,
)
def test_diffs_quote_text_and_nothing_else(change: Change, text: str) -> None:
    """Text values are double-quoted in every diff (scalars, subjects, metadata
    and placement alike); quantities, booleans and `unlimited` are bare."""
    assert render.change_text(change) == text


TEXT = st.text(max_size=20)


@given(st.sampled_from(["discard", "retention", "description", "compression"]), TEXT, TEXT)
def test_a_text_field_always_shows_quoted(field: str, current: str, desired: str) -> None:
    """Whatever the text, a diff shows it quoted the same way on both sides."""
    shown = render.change_text(Change(field, current, desired))
    assert shown == f"{field}: {quote(current)} -> {quote(desired)}"


@given(st.dictionaries(TEXT, TEXT, max_size=4), st.dictionaries(TEXT, TEXT, max_size=4))
def test_metadata_from_the_broker_prints_on_one_line(
    current: dict[str, str], desired: dict[str, str]
) -> None:
    """Any metadata keys and values a client wrote stay on one printable line."""
    change = Change("metadata", tuple(sorted(current.items())), tuple(sorted(desired.items())))
    shown = render.change_text(change)
    assert shown.isprintable()
    assert "\n" not in shown


# --- data at stake: before the write, and after it -------------------------------------------


def test_apply_tells_discarded_messages_in_the_past_tense() -> None:
    """An update that lowers max_msgs under discard old is told, once written,
    as data discarded, without a 'would'."""
    d = decide(stream(max_msgs=4), filled(10, 10 * KIB, max_msgs=-1), NOW)
    assert d.action is Action.UPDATE
    assert [render.applied_effect(s) for s in d.stakes] == [
        "data discarded: 6 of 10 messages were over the new max_msgs 4"
    ]


def test_apply_tells_a_discard_new_cap_as_refused_writes_not_lost_data() -> None:
    """Under discard new a lower cap keeps every message: apply says new writes
    are now refused, and never that data was discarded."""
    d = decide(
        stream(max_bytes=256 * KIB, discard="new"),
        filled(120, 960 * KIB, discard="new"),
        NOW,
    )
    assert d.action is Action.UPDATE
    lines = [render.applied_effect(s) for s in d.stakes]
    assert lines == [
        "new writes are now refused: 704KiB of 960KiB stored is over the new cap of 256KiB"
    ]


def test_apply_tells_every_planned_effect_without_would() -> None:
    """Lower bytes, age and per-subject limits at once: every effect apply prints
    is in the past tense."""
    d = decide(
        stream(max_bytes=256 * KIB, max_age=SEC * 60, max_msgs_per_subject=1),
        filled(120, 960 * KIB),
        NOW,
    )
    assert len(d.at_stake) == 3
    lines = [render.applied_effect(s) for s in d.stakes]
    assert all(line.startswith("data discarded: ") for line in lines), lines
    assert not any("would" in line for line in lines), lines
    assert "704KiB of 960KiB stored was over the new cap of 256KiB" in lines[0]


def test_an_effect_the_wording_does_not_know_is_still_shown() -> None:
    """A sentence the past-tense rules do not know is passed on, marked as lost
    data when it loses data and as an effect otherwise."""
    assert render.applied_effect(Stake("something new", False)) == (
        "stored data affected by the update: something new"
    )
    assert render.applied_effect(Stake("something gone", True)) == (
        "data discarded: something gone"
    )


# --- counts and times --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "text"), [(0, "0 requests"), (1, "1 request"), (2, "2 requests"), (26, "26 requests")]
)
def test_counts_agree_with_their_noun(n: int, text: str) -> None:
    assert render.counted(n, "request") == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0004, "<1 ms"), (0.005, "5 ms"), (0.0456, "46 ms"), (1.234, "1.2 s"), (75.2, "75 s")],
)
def test_elapsed_time_reads_in_ms_or_s(seconds: float, text: str) -> None:
    assert render.elapsed_text(seconds) == text


# --- check -----------------------------------------------------------------------------------


def _decisions(**actions: Action) -> list[Decision]:
    return [Decision(stream(name), action) for name, action in actions.items()]


def test_critical_check_names_drift_and_blocked_too() -> None:
    """At CRITICAL the status text names what is missing, and also what drifted,
    is blocked or has a newer spec, worst first; perfdata keep their order."""
    decisions = _decisions(
        A=Action.CREATE, B=Action.UPDATE, C=Action.BLOCKED, D=Action.NEWER_SPEC, E=Action.IN_SYNC
    )
    report = check.check_report(
        decisions, ClusterFacts(leaderless=["F"], behind=["G 2/3"]), seconds=0.004
    )
    assert report.status == "CRITICAL"
    assert report.code == 2
    assert report.line() == (
        "JETSTREAM CRITICAL - missing: A; no leader: F; drifted: B; blocked: C; "
        "newer spec present: D; replicas behind: G 2/3 | resources=5 in_sync=1 missing=1 "
        "drifted=1 blocked=1 newer_spec=1 leaderless=1 replicas_behind=1 suspicious_marker=0 "
        "undeclared=0 time=0.004s"
    )


def test_warning_and_ok_check_lines() -> None:
    """Without missing or leaderless resources the worst is WARNING; with nothing
    to say, OK counts what is in sync."""
    warn = check.check_report(
        _decisions(A=Action.UPDATE, B=Action.IN_SYNC), ClusterFacts(), seconds=0
    )
    assert warn.status == "WARNING"
    assert warn.line().startswith("JETSTREAM WARNING - drifted: A | resources=2 in_sync=1 ")
    ok = check.check_report(_decisions(A=Action.IN_SYNC), ClusterFacts(), seconds=0)
    assert ok.line().startswith("JETSTREAM OK - 1/1 in sync | resources=1 ")
    assert ok.code == 0


def test_check_names_the_server_version_a_declared_field_needs() -> None:
    """A resource blocked because the server is too old: check's text says which
    server and which field, next to the blocked resource."""
    decisions = _decisions(C=Action.BLOCKED)
    report = check.check_report(
        decisions,
        ClusterFacts(),
        seconds=0.001,
        needs_newer="nats-server 2.10.22 too old: C needs allow_msg_ttl (nats-server 2.11.0)",
    )
    assert report.status == "WARNING"
    assert report.text == (
        "blocked: C; nats-server 2.10.22 too old: C needs allow_msg_ttl (nats-server 2.11.0)"
    )
