"""NATS name and subject rules, and the subject-overlap test the config uses to
catch what the broker would refuse with 10065."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kanade_watchdog.model.subjects import (
    MAX_NAME_LEN,
    SubjectIndex,
    bucket_name_problem,
    stream_name_problem,
    subject_problem,
    subjects_overlap,
)


@pytest.mark.parametrize(
    "name",
    ["ORDERS", "KV_jobs", "OBJ_scripts", "a-b_c", "x", "x" * MAX_NAME_LEN, "$weird!#%"],
    ids=lambda n: repr(n[:20]),
)
def test_valid_stream_names_pass(name: str) -> None:
    """Printable ASCII names without separators or wildcards are valid stream names."""
    assert stream_name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        ("a.b", "printable ASCII"),
        ("has space", "printable ASCII"),
        ("a*", "printable ASCII"),
        ("a>", "printable ASCII"),
        ("a/b", "printable ASCII"),
        ("a\\b", "printable ASCII"),
        ("tab\there", "printable ASCII"),
        ("new\nline", "printable ASCII"),
        ("caf\u00e9", "printable ASCII"),
        ("del\x7f", "printable ASCII"),
        ("nul\x00", "printable ASCII"),
        ("x" * (MAX_NAME_LEN + 1), "longer than"),
    ],
    ids=lambda v: repr(v[:20]),
)
def test_invalid_stream_names_are_explained(name: str, why: str) -> None:
    """A stream name the broker would refuse yields a reason, not None."""
    problem = stream_name_problem(name)
    assert problem is not None
    assert why in problem


@pytest.mark.parametrize(
    "name", ["jobs", "a-b_C9", "_", "-", "x" * (MAX_NAME_LEN - 4)], ids=lambda n: repr(n[:20])
)
def test_valid_bucket_names_pass(name: str) -> None:
    """Letters, digits, '_' and '-' make a valid KV or object-store bucket name."""
    assert bucket_name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "may only contain"),
        ("bad name!", "may only contain"),
        ("a.b", "may only contain"),
        ("a*", "may only contain"),
        ("caf\u00e9", "may only contain"),
        ("a/b", "may only contain"),
        ("x" * (MAX_NAME_LEN - 3), "longer than"),
    ],
    ids=lambda v: repr(v[:20]),
)
def test_invalid_bucket_names_are_explained(name: str, why: str) -> None:
    """A bucket name outside [A-Za-z0-9_-], or too long for OBJ_<name>, yields a reason."""
    problem = bucket_name_problem(name)
    assert problem is not None
    assert why in problem


@pytest.mark.parametrize(
    "subject",
    ["a", "a.b", "a.*", "a.>", ">", "*", "*.*", "$KV.x.>", "a.*.c", "$O.b.C.>", "caf\u00e9.x"],
    ids=repr,
)
def test_valid_subjects_pass(subject: str) -> None:
    """Dot-separated tokens with whole-token wildcards, '>' last, are valid subjects."""
    assert subject_problem(subject) is None


@pytest.mark.parametrize(
    ("subject", "why"),
    [
        ("", "empty"),
        ("a..b", "empty token"),
        (".a", "empty token"),
        ("a.", "empty token"),
        ("a.>.b", "last token"),
        (">.a", "last token"),
        ("a*", "whole tokens"),
        ("a.b>", "whole tokens"),
        ("a.*b.c", "whole tokens"),
        ("a b", "whitespace"),
        ("a\tb", "whitespace"),
        ("a\x00b", "control"),
        ("a\x1bb", "control"),
    ],
    ids=repr,
)
def test_invalid_subjects_are_explained(subject: str, why: str) -> None:
    """A malformed subject filter yields a reason naming what is wrong."""
    problem = subject_problem(subject)
    assert problem is not None
    assert why in problem


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("a.>", "a.b", True),
        ("a.*", "a.b.c", False),
        ("a.*", "a.>", True),
        ("a", "a.>", False),
        ("$KV.x.>", "$KV.>", True),
        ("a.b", "a.b", True),
        ("a.b", "a.c", False),
        ("a.b", "a.b.c", False),
        (">", "a", True),
        (">", "a.b.c", True),
        ("*", "a", True),
        ("*", "a.b", False),
        ("*.b", "a.*", True),
        ("*.b", "a.c", False),
        ("a.*.c", "a.b.>", True),
        ("a.*.c", "a.b.d", False),
        ("$KV.jobs.>", "$KV.jobs2.>", False),
        ("$O.b.C.>", "$O.b.M.>", False),
        ("$O.*.C.>", "$O.b.C.x", True),
        ("inventory.>", "results.>", False),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_subjects_overlap_truth_table(a: str, b: str, overlap: bool) -> None:
    """Two filters overlap exactly when some concrete subject matches both, in either order."""
    assert subjects_overlap(a, b) is overlap
    assert subjects_overlap(b, a) is overlap


# --- overlap against a brute-force reference ------------------------------------

_TOKENS = ("a", "b")
_FILTER_TOKENS = ("a", "b", "*", ">")


def _matches(filter_: str, subject: str) -> bool:
    ft, st_ = filter_.split("."), subject.split(".")
    for i, tok in enumerate(ft):
        if tok == ">":
            return len(st_) > i
        if i >= len(st_) or (tok != "*" and tok != st_[i]):
            return False
    return len(ft) == len(st_)


def _filters() -> st.SearchStrategy[str]:
    def valid(tokens: list[str]) -> bool:
        return ">" not in tokens[:-1]

    return (
        st.lists(st.sampled_from(_FILTER_TOKENS), min_size=1, max_size=3)
        .filter(valid)
        .map(".".join)
    )


@given(_filters(), _filters())
@settings(max_examples=400, deadline=None)
def test_subjects_overlap_agrees_with_brute_force(a: str, b: str) -> None:
    """subjects_overlap is True iff a concrete subject (searched exhaustively) matches both."""
    # A witness, if any, needs at most max(len) tokens; 'z' stands for any other token.
    longest = max(a.count("."), b.count(".")) + 1
    alphabet = (*_TOKENS, "z")
    witness = any(
        _matches(a, s) and _matches(b, s)
        for n in range(1, longest + 1)
        for s in (".".join(p) for p in itertools.product(alphabet, repeat=n))
    )
    assert subject_problem(a) is None
    assert subjects_overlap(a, b) is witness


@given(filed=st.lists(_filters(), max_size=12), probe=_filters())
def test_subject_index_agrees_with_pairwise_overlap(filed: list[str], probe: str) -> None:
    """The subject index finds exactly the filed subjects the pairwise rule says overlap."""
    index = SubjectIndex()
    for subject in dict.fromkeys(filed):
        index.add(subject)
    expected = sorted(s for s in dict.fromkeys(filed) if subjects_overlap(probe, s))
    assert sorted(index.overlapping(probe)) == expected


@given(filed=st.lists(_filters(), max_size=12), probe=_filters(), limit=st.integers(1, 4))
def test_subject_index_limit_returns_a_prefix_of_the_overlaps(
    filed: list[str], probe: str, limit: int
) -> None:
    """With a limit, the index returns that many overlapping subjects (or all there
    are, if fewer), each one a true overlap."""
    index = SubjectIndex()
    for subject in dict.fromkeys(filed):
        index.add(subject)
    everything = index.overlapping(probe)
    some = index.overlapping(probe, limit=limit)
    assert len(some) == min(limit, len(everything))
    assert set(some) <= set(everything)


def test_subject_index_limit_stops_the_walk_early(monkeypatch: pytest.MonkeyPatch) -> None:
    """Asking for one overlap among thousands visits few of them: the early stop is
    what keeps thousands of overlapping streams cheap to check."""
    index = SubjectIndex()
    for i in range(5000):
        index.add(f"a.x{i}.*")
    visits = 0
    walk = SubjectIndex._walk

    def counting(self: SubjectIndex, *args: Any) -> None:
        nonlocal visits
        visits += 1
        walk(self, *args)

    monkeypatch.setattr(SubjectIndex, "_walk", counting)
    assert len(index.overlapping("a.*.b", limit=1)) == 1
    assert visits < 10
    visits = 0
    assert len(index.overlapping("a.*.b")) == 5000
    assert visits > 5000
