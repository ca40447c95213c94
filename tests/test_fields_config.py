"""The fields beyond the classic limits, as the config file takes them: mirror,
sources, subject mappings, republish, consumer limits, TTLs, counters and the
bucket topologies. Every value lands in the server's JSON shape and units;
everything the broker would refuse (each rule below was refused by nats-server
2.15.1) is one problem line with the key path and the value, before any traffic.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kanade_watchdog.config.load import FIELDS, load
from kanade_watchdog.config.streamfields import SINCE, version_text
from kanade_watchdog.model.errors import ConfigError
from kanade_watchdog.model.fieldvalues import Items, Table, canon, plain, utc_time
from kanade_watchdog.model.mappings import destination_problem
from kanade_watchdog.model.resources import SECTION, Kind, Resource

SEC = 1_000_000_000


def resources(tmp_path: Path, text: str) -> dict[str, Resource]:
    path = tmp_path / "watchdog.toml"
    path.write_text(text, encoding="utf-8")
    return {r.stream: r for r in load(str(path)).resources}


def problems(tmp_path: Path, text: str) -> tuple[str, list[str]]:
    path = tmp_path / "watchdog.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(str(path))
    return str(path), info.value.problems


def one_line(tmp_path: Path, text: str, key: str) -> str:
    """The one problem of `text`, checked to be at `key`."""
    path, lines = problems(tmp_path, text)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}: {key}: "), lines
    return lines[0]


ORIGIN = '[streams.O]\nsubjects = ["o.>"]\n'


# --- values in the server's shape ---------------------------------------------------------


def test_stream_fields_parse_to_the_servers_json_and_units(tmp_path: Path) -> None:
    """Durations in ns, a domain as external.api, a start time in UTC, sources as an
    unordered list of tables, each only with what is set."""
    declared = resources(
        tmp_path,
        ORIGIN + "[streams.AGG]\n"
        'subjects = ["agg.>"]\n'
        'republish = { src = "agg.>", dest = "out.>", headers_only = true }\n'
        'subject_transform = { src = "agg.in.>", dest = "agg.kept.>" }\n'
        'consumer_limits = { inactive_threshold = "5m", max_ack_pending = 100 }\n'
        'max_consumers = 10\nno_ack = true\ndiscard = "new"\nmax_msgs_per_subject = 3\n'
        "discard_new_per_subject = true\nallow_msg_ttl = true\nallow_rollup_hdrs = true\n"
        'subject_delete_marker_ttl = "1m"\nallow_atomic = true\nfirst_seq = 1000\n'
        "[[streams.AGG.sources]]\n"
        'name = "O"\nfilter_subject = "o.eu.>"\nopt_start_seq = 7\n'
        "[[streams.AGG.sources]]\n"
        'name = "R"\ndomain = "hub"\nopt_start_time = 2025-01-01T02:00:00+02:00\n'
        'subject_transforms = [{ src = "r.*", dest = "agg.r.{{wildcard(1)}}" }]\n',
    )["AGG"].declared
    assert isinstance(declared["sources"], Items)
    assert plain(declared["sources"]) == [
        {
            "external": {"api": "$JS.hub.API"},
            "name": "R",
            "opt_start_time": "2025-01-01T00:00:00Z",
            "subject_transforms": [{"dest": "agg.r.{{wildcard(1)}}", "src": "r.*"}],
        },
        {"filter_subject": "o.eu.>", "name": "O", "opt_start_seq": 7},
    ]
    assert declared["republish"] == {"src": "agg.>", "dest": "out.>", "headers_only": True}
    assert declared["subject_transform"] == {"src": "agg.in.>", "dest": "agg.kept.>"}
    assert declared["consumer_limits"] == {"inactive_threshold": 300 * SEC, "max_ack_pending": 100}
    assert declared["subject_delete_marker_ttl"] == 60 * SEC
    assert (declared["max_consumers"], declared["first_seq"]) == (10, 1000)
    assert declared["no_ack"] is declared["allow_atomic"] is True


def test_mirror_and_sourced_streams_need_no_subjects(tmp_path: Path) -> None:
    """A mirror has no subjects, and a stream fed only by sources needs none."""
    declared = resources(
        tmp_path,
        ORIGIN + '[streams.M]\nmirror = { name = "O" }\n[streams.A]\nsources = [{ name = "O" }]\n',
    )
    assert declared["M"].declared == {"mirror": {"name": "O"}}
    assert declared["A"].declared == {"sources": Items([Table(name="O")])}


def test_kv_topologies_are_in_the_adr8_shape(tmp_path: Path) -> None:
    """A KV mirror names its origin bucket (stream KV_<origin>); a bucket sourced from
    another gets the transform $KV.<origin>.> -> $KV.<bucket>.> that clients expect,
    except from a bucket of its own name in another domain."""
    declared = resources(
        tmp_path,
        "[kv_buckets.cfg]\nhistory = 5\nmetadata = { team = 'ops' }\n"
        'limit_marker_ttl = "30s"\nrepublish = { src = "$KV.cfg.>", dest = "seen.cfg.>" }\n'
        "[kv_buckets.cfg_copy]\nmirror = { name = 'cfg' }\n"
        "[kv_buckets.all]\nsources = [{ name = 'cfg' }, { name = 'all', domain = 'leaf' }]\n"
        "[object_stores.blobs]\nmetadata = { owner = 'build' }\n",
    )
    assert declared["KV_cfg"].declared["limit_marker_ttl"] == 30 * SEC
    assert declared["KV_cfg"].declared["metadata"] == (("team", "ops"),)
    assert declared["KV_cfg_copy"].declared["mirror"] == {"name": "KV_cfg"}
    assert plain(declared["KV_all"].declared["sources"]) == [
        {"external": {"api": "$JS.leaf.API"}, "name": "KV_all"},
        {"name": "KV_cfg", "subject_transforms": [{"dest": "$KV.all.>", "src": "$KV.cfg.>"}]},
    ]
    assert declared["OBJ_blobs"].declared["metadata"] == (("owner", "build"),)


@given(st.permutations(["A", "B", "C", "D"]))
def test_sources_compare_without_regard_to_order(order: list[str]) -> None:
    """The same sources in any order are one canonical value (owned as a whole)."""
    listed = [
        {"name": n, **({"filter_subject": f"{n.lower()}.x"} if n > "B" else {})} for n in order
    ]
    assert canon(listed, "sources") == canon(sorted(listed, key=lambda s: s["name"]), "sources")


@given(
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)),
    st.integers(-14 * 60, 14 * 60),
)
def test_start_times_compare_in_utc(moment: datetime, minutes: int) -> None:
    """One instant written with any offset reads as the same UTC text, and that
    text parses back to itself (the broker stores what it is sent)."""
    zoned = moment.replace(tzinfo=timezone(timedelta(minutes=minutes)))
    as_utc = utc_time(zoned)
    assert as_utc == utc_time(zoned.astimezone(UTC))
    assert as_utc == utc_time(zoned.isoformat())
    assert utc_time(as_utc) == as_utc


def test_start_time_keeps_nanoseconds() -> None:
    """Go writes nanoseconds; they survive, trailing zeros dropped as Go drops them."""
    assert utc_time("2025-01-01T02:00:00.123456789+02:00") == "2025-01-01T00:00:00.123456789Z"
    assert utc_time("2025-01-01T00:00:00.500Z") == "2025-01-01T00:00:00.5Z"


# --- what the broker refuses, one line each ------------------------------------------------

REFUSED = [
    (
        ORIGIN + '[streams.M]\nsubjects = ["m.>"]\nmirror = { name = "O" }\n',
        "streams.M.subjects",
        "a mirror has no subjects of its own",
        "got ['m.>']",
    ),
    (
        ORIGIN + '[streams.M]\nmirror = { name = "O" }\nsources = [{ name = "O" }]\n',
        "streams.M.sources",
        "a mirror cannot also have sources",
        "got [{'name': 'O'}]",
    ),
    (
        ORIGIN + '[streams.M]\nmirror = { name = "O" }\nfirst_seq = 5\n',
        "streams.M.first_seq",
        "is not for a mirror",
        "got 5",
    ),
    (
        '[streams.S]\nsubjects = ["s.>"]\nsources = [{ name = "S" }]\n',
        "streams.S.sources",
        "it cannot source itself (S)",
        "got [{'name': 'S'}]",
    ),
    (
        '[streams.S]\nmirror = { name = "S" }\n',
        "streams.S.mirror",
        "it cannot mirror itself (S)",
        "got {'name': 'S'}",
    ),
    (
        ORIGIN
        + '[streams.S]\nsubjects = ["s.>"]\n'
        + 'sources = [{ name = "O", subject_transforms = [\n'
        + '  { src = "o.*", dest = "s.{{wildcard(2)}}" }] }]\n',
        "streams.S.sources[0].subject_transforms[0].dest",
        "refers to wildcard 2, but the source has only 1 '*' token",
        "got 's.{{wildcard(2)}}'",
    ),
    (
        '[streams.S]\nsubjects = ["s.>"]\nsubject_transform = { src = "s.>", dest = "t.*" }\n',
        "streams.S.subject_transform.dest",
        "a destination has no '*' token",
        "got 't.*'",
    ),
    (
        '[streams.S]\nsubjects = ["s.>"]\nrepublish = { src = "s.*", dest = "r.{{nope(1)}}" }\n',
        "streams.S.republish.dest",
        "unknown mapping function 'nope'",
        "got 'r.{{nope(1)}}'",
    ),
    (
        '[streams.S]\nsubjects = ["s.>"]\nrepublish = { src = "s.>", dest = "s.again.>" }\n',
        "streams.S.republish",
        "overlaps the stream's own subject 's.>': a cycle",
        "got {'src': 's.>', 'dest': 's.again.>'}",
    ),
    (
        '[streams.S]\nsubjects = ["s.>"]\nallow_rollup_hdrs = true\n'
        'subject_delete_marker_ttl = "1m"\n',
        "streams.S.subject_delete_marker_ttl",
        "needs allow_msg_ttl = true",
        "got '1m'",
    ),
    (
        '[streams.S]\nsubjects = ["s.>"]\nallow_msg_ttl = true\nsubject_delete_marker_ttl = "1m"\n',
        "streams.S.subject_delete_marker_ttl",
        "needs allow_rollup_hdrs = true",
        "got '1m'",
    ),
    (
        '[streams.S]\nsubjects = ["s.>"]\nsubject_delete_marker_ttl = "500ms"\n',
        "streams.S.subject_delete_marker_ttl",
        "must be at least 1s",
        "got '500ms'",
    ),
    (
        '[streams.S]\nsubjects = ["s.>"]\nmax_msgs_per_subject = 3\n'
        "discard_new_per_subject = true\n",
        "streams.S.discard_new_per_subject",
        'needs discard = "new"',
        "got True",
    ),
    (
        '[streams.S]\nsubjects = ["s.>"]\nallow_msg_counter = true\nallow_msg_ttl = true\n',
        "streams.S.allow_msg_counter",
        "a counter stream cannot use message TTLs",
        "got True",
    ),
    (
        '[streams.S]\nsubjects = ["s.>"]\nallow_msg_schedules = true\n',
        "streams.S.allow_msg_schedules",
        "needs allow_rollup_hdrs = true",
        "got True",
    ),
    (
        '[streams.S]\nsubjects = ["s.>"]\nmirror_direct = true\n',
        "streams.S.mirror_direct",
        "only a mirror serves direct gets",
        "got True",
    ),
    (
        ORIGIN + '[streams.S]\nsubjects = ["s.>"]\nsources = [{ name = "O" }, { name = "O" }]\n',
        "streams.S.sources[1]",
        "is listed twice",
        "",
    ),
    (
        ORIGIN + '[streams.S]\nsubjects = ["s.>"]\n'
        'sources = [{ name = "O", domain = "hub", external = { api = "$JS.x.API" } }]\n',
        "streams.S.sources[0].domain",
        "set domain or external, not both",
        "",
    ),
    (
        ORIGIN + '[streams.S]\nsubjects = ["s.>"]\nsources = [{ name = "O", filter_subject = "o.a",'
        ' subject_transforms = [{ src = "o.b", dest = "s.b" }] }]\n',
        "streams.S.sources[0].filter_subject",
        "goes in each subject_transforms src",
        "got 'o.a'",
    ),
    (
        ORIGIN + '[streams.S]\nsubjects = ["s.>"]\nsources = [{ name = "O", opt_start_time = '
        "2025-01-01T00:00:00 }]\n",
        "streams.S.sources[0].opt_start_time",
        "needs a time zone offset",
        "got '2025-01-01T00:00:00'",
    ),
    (
        '[streams.O]\nsubjects = ["o.>"]\nallow_direct = true\n'
        '[streams.M]\nmirror = { name = "O" }\n',
        "streams.M.mirror_direct",
        "its origin O serves direct gets (allow_direct): a mirror of it needs mirror_direct",
        "",
    ),
    (
        '[streams.A]\nsubjects = ["a.>"]\nsources = [{ name = "B" }]\n'
        '[streams.B]\nmirror = { name = "A" }\n',
        "streams.A.sources",
        "A -> B -> A is a cycle",
        "",
    ),
    (
        "[kv_buckets.b]\nsources = [{ name = 'b' }]\n",
        "kv_buckets.b.sources",
        "it cannot source itself (KV_b)",
        "",
    ),
    (
        "[kv_buckets.b]\nmirror = { name = 'a' }\nlimit_marker_ttl = '1m'\n",
        "kv_buckets.b.limit_marker_ttl",
        "is not for a mirror",
        "got '1m'",
    ),
    (
        "[kv_buckets.b]\nmirror = { name = 'a.b' }\n",
        "kv_buckets.b.mirror.name",
        "must be a bucket name",
        "got 'a.b'",
    ),
    (
        '[streams.S]\nsubjects = ["s.>"]\nconsumer_limits = { max_ack_pending = 0 }\n',
        "streams.S.consumer_limits.max_ack_pending",
        "must be a whole number from 1",
        "got 0",
    ),
    (
        '[streams.S]\nsubjects = ["s.>"]\nsources = [{ name = "O", colour = 1 }]\n',
        "streams.S.sources[0].colour",
        "unknown key",
        "",
    ),
]


@pytest.mark.parametrize(
    ("text", "key", "why", "shown"), REFUSED, ids=[k + ":" + w[:24] for _, k, w, _ in REFUSED]
)
def test_what_the_broker_refuses_is_one_line_with_key_path_and_value(
    tmp_path: Path, text: str, key: str, why: str, shown: str
) -> None:
    """Each inconsistency the broker would refuse is exactly one line: the file,
    the key path, why, and the value as written."""
    line = one_line(tmp_path, text, key)
    assert why in line
    assert shown in line


@pytest.mark.parametrize(
    ("src", "dest"),
    [
        ("a.*", "b.{{wildcard(1)}}"),
        ("a.*.*", "b.{{wildcard(2)}}.{{wildcard(1)}}"),
        ("a.*", "b.$1"),
        ("a.>", "b.>"),
        ("a.*.>", "b.{{wildcard(1)}}.>"),
        ("a.*", "b.{{partition(3,1)}}"),
        ("a.*", "b.{{split(1,-)}}"),
        ("a.*", "b.{{ SplitFromLeft( 1, 3 ) }}"),
        ("a.*", "b.c"),
        ("a.*", "b.{{wildcard(1)}}x"),
    ],
)
def test_mappings_the_broker_takes_pass(src: str, dest: str) -> None:
    """Every mapping nats-server 2.15.1 accepted is accepted here."""
    assert destination_problem(src, dest) is None


@pytest.mark.parametrize(
    ("src", "dest"),
    [
        ("a.*", "b.*"),
        ("a.*", "b.>"),
        ("a.>", "b.*"),
        ("a.>", "b.{{wildcard(1)}}"),
        ("a.*", "b.{{wildcard(2)}}"),
        ("a.*", "b.$2"),
        ("a.*", "b.{{unknown(1)}}"),
        ("a.*", "b..c"),
        ("a.*", "b. c"),
        ("a.*", "b.{{wildcard()}}"),
        ("a.*", "b.{{wildcard(1,2)}}"),
        ("a.*", "b.{{split(1)}}"),
        ("a.*", "b.{{partition(3,2)}}"),
        ("a.*", "b.{{wildcard(a)}}"),
    ],
)
def test_mappings_the_broker_refuses_are_refused(src: str, dest: str) -> None:
    """Every mapping nats-server 2.15.1 refused is refused here, before any traffic."""
    assert destination_problem(src, dest) is not None


def test_every_problem_of_a_file_in_one_run(tmp_path: Path) -> None:
    """Several topology mistakes in one file: every one reported, one line each."""
    _, lines = problems(
        tmp_path,
        ORIGIN
        + '[streams.M]\nsubjects = ["m.>"]\nmirror = { name = "O" }\nsources = [{ name = "O" }]\n'
        + '[streams.S]\nsubjects = ["s.>"]\nsources = [{ name = "S" }]\n',
    )
    assert len(lines) == 3, lines
    assert all(line.count("\n") == 0 for line in lines)


def test_every_combination_of_mirror_conflicts_is_reported(tmp_path: Path) -> None:
    """With a mirror, each of subjects, sources and first_seq is its own line."""
    keys = ["subjects", "sources", "first_seq"]
    values: dict[str, str] = {
        "subjects": '["m.>"]',
        "sources": '[{ name = "O" }]',
        "first_seq": "5",
    }
    for n in range(1, 4):
        for chosen in itertools.combinations(keys, n):
            body = "".join(f"{k} = {values[k]}\n" for k in chosen)
            _, lines = problems(
                tmp_path, ORIGIN + f'[streams.M]\nmirror = {{ name = "O" }}\n{body}'
            )
            assert sorted(line.split(": ")[1] for line in lines) == sorted(
                f"streams.M.{k}" for k in chosen
            ), lines


def test_values_are_shown_without_python_objects(tmp_path: Path) -> None:
    """A TOML time is shown as written, not as a Python object."""
    line = one_line(
        tmp_path,
        ORIGIN + '[streams.M]\nmirror = { name = "O", opt_start_time = 2025-01-01T00:00:00 }\n',
        "streams.M.mirror.opt_start_time",
    )
    assert "datetime" not in line


# --- the README's reference ------------------------------------------------------------------

README = Path(__file__).resolve().parent.parent / "README.md"


def _reference_rows(kind: Kind) -> dict[str, str]:
    """key -> its row in the README's field reference table for `kind`."""
    text = README.read_text(encoding="utf-8")
    table = text.split(f"`[{SECTION[kind]}.*]` | server field | since", 1)[1].split("\n\n", 1)[0]
    rows = [line for line in table.splitlines()[2:] if line.startswith("`")]
    return {line.split("`")[1]: line for line in rows}


@pytest.mark.parametrize("kind", list(Kind))
def test_readme_reference_lists_every_field_with_the_version_that_brought_it(
    kind: Kind,
) -> None:
    """Every key a declaration takes is in the README's reference, with the
    nats-server version that brought it, and nothing else is."""
    rows = _reference_rows(kind)
    assert set(rows) == set(FIELDS[kind])
    for key, row in rows.items():
        assert f"| {version_text(SINCE[kind][key])}" in row, row


def test_readme_stream_example_is_a_valid_declaration(tmp_path: Path) -> None:
    """The README's example of the new stream fields loads as written."""
    text = README.read_text(encoding="utf-8")
    example = text.split("```toml\n[streams.ORDERS_EU]", 1)[1].split("```", 1)[0]
    found = resources(
        tmp_path,
        '[streams.ORDERS]\nsubjects = ["orders.>"]\nallow_direct = true\n'
        + "[streams.ORDERS_EU]"
        + example,
    )
    assert plain(found["ALL_ORDERS"].declared["sources"])[0]["external"] == {"api": "$JS.hub.API"}
    assert found["ORDERS_EU"].declared["mirror_direct"] is True
