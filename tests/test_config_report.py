"""How problems are reported: every problem of a file in one run (a bad value
does not hide an overlap), a "did you mean" for every unknown key, and a cap
on lines of one kind, so thousands of overlapping streams give a short,
bounded report."""

from __future__ import annotations

from pathlib import Path

import pytest

from kanade_watchdog.config.load import load
from kanade_watchdog.config.problems import MAX_LINES_PER_KIND
from kanade_watchdog.model.errors import ConfigError

BASE = '[streams.S]\nsubjects = ["s.>"]\n'


def problems_of(tmp_path: Path, text: str) -> tuple[str, list[str]]:
    path = tmp_path / "watchdog.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(str(path))
    return str(path), info.value.problems


def keyed(lines: list[str], path: str) -> dict[str, str]:
    """problem lines by key path (each key path once)."""
    out: dict[str, str] = {}
    for line in lines:
        assert line.startswith(f"{path}: "), line
        key, _, what = line[len(path) + 2 :].partition(": ")
        assert key not in out, f"two lines for {key}: {lines}"
        out[key] = what
    return out


# --- every problem in one run --------------------------------------------------------


def test_typo_bad_duration_and_overlap_are_all_reported(tmp_path: Path) -> None:
    """A typo key, a bad duration and an overlapping subject in one file give three
    lines in one run: a resource with a bad value still takes part in the
    cross checks its own problems do not affect."""
    text = (
        '[streams.ORDERS]\nsubjects = ["orders.>"]\nmax_agee = "1d"\n'
        '[streams.EU]\nsubjects = ["orders.eu.>"]\nmax_age = "30 days"\n'
    )
    path, lines = problems_of(tmp_path, text)
    found = keyed(lines, path)
    assert set(found) == {"streams.ORDERS.max_agee", "streams.EU.max_age", "streams.EU.subjects"}
    assert "did you mean 'max_age'?" in found["streams.ORDERS.max_agee"]
    assert found["streams.EU.max_age"].endswith("got '30 days'")
    assert "'orders.eu.>' overlaps 'orders.>' of streams.ORDERS" in found["streams.EU.subjects"]


def test_a_name_clash_is_reported_next_to_a_bad_value(tmp_path: Path) -> None:
    """A stream whose own value is bad still counts for the name check."""
    text = '[streams.KV_jobs]\nsubjects = ["jobs.>"]\nmax_bytes = -1\n[kv_buckets.jobs]\n'
    path, lines = problems_of(tmp_path, text)
    found = keyed(lines, path)
    assert set(found) == {"streams.KV_jobs.max_bytes", "kv_buckets.jobs"}
    assert "'KV_jobs' is already declared by streams.KV_jobs" in found["kv_buckets.jobs"]


def test_bad_subjects_take_no_part_in_the_overlap_check(tmp_path: Path) -> None:
    """Subjects that are themselves invalid are reported once, not compared."""
    text = '[streams.A]\nsubjects = ["a..b", "x.>"]\n[streams.B]\nsubjects = ["x.y"]\n'
    path, lines = problems_of(tmp_path, text)
    assert set(keyed(lines, path)) == {"streams.A.subjects"}


def test_every_problem_inside_the_tls_table_has_its_own_line(tmp_path: Path) -> None:
    """An unknown key and bad values in [nats.tls] are all reported, each at its own
    key path, in one run."""
    text = '[nats.tls]\nverify = "yes"\nserver_name = 5\ncolour = 1\n' + BASE
    path, lines = problems_of(tmp_path, text)
    found = keyed(lines, path)
    assert set(found) == {"nats.tls.verify", "nats.tls.server_name", "nats.tls.colour"}
    assert found["nats.tls.verify"] == "must be true or false, got 'yes'"
    assert found["nats.tls.server_name"] == "must be a string, got 5"


# --- did you mean --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "meant"),
    [
        ("spec_versoin = 2\n" + BASE, "spec_versoin", "spec_version"),
        ('[nats]\nserver = "nats://h:4222"\n' + BASE, "nats.server", "servers"),
        ('[nats.tls]\nca_fille = "/x"\n' + BASE, "nats.tls.ca_fille", "ca_file"),
        (
            "[watchdog]\nresync_intervall = 1\n" + BASE,
            "watchdog.resync_intervall",
            "resync_interval",
        ),
        (BASE + 'max-age = "1d"\n', "streams.S.max-age", "max_age"),
        (BASE + "protekt = true\n", "streams.S.protekt", "protect"),
        (BASE + 'placement = { clustr = "c" }\n', "streams.S.placement.clustr", "cluster"),
        ("[kv_buckets.jobs]\nhistroy = 5\n", "kv_buckets.jobs.histroy", "history"),
        ("[kv_buckets.jobs]\nHistory = 5\n", "kv_buckets.jobs.History", "history"),
        ('[object_stores.b]\nttll = "1d"\n', "object_stores.b.ttll", "ttl"),
    ],
    ids=["top", "nats", "tls", "watchdog", "stream", "protect", "placement", "kv", "case", "obj"],
)
def test_unknown_keys_suggest_the_nearest_known_key(
    tmp_path: Path, text: str, key: str, meant: str
) -> None:
    """Wherever an unknown key is reported, the nearest known key is suggested."""
    path, lines = problems_of(tmp_path, text)
    line = keyed(lines, path)[key]
    assert line.startswith(f"unknown key, did you mean {meant!r}? (known: ")


def test_no_suggestion_for_a_key_like_nothing_known(tmp_path: Path) -> None:
    """A key close to no known key gets the list of known keys only."""
    path, lines = problems_of(tmp_path, BASE + "zzzzqqq = 1\n")
    line = keyed(lines, path)["streams.S.zzzzqqq"]
    assert line.startswith("unknown key (known: subjects, ")
    assert "did you mean" not in line


# --- a bounded report ------------------------------------------------------------------


def crossing_streams(n: int) -> str:
    """2n streams where each of the second n overlaps every one of the first n
    (`a.*.xI` and `a.yJ.*` share `a.yJ.xI`): n * n overlapping pairs."""
    first = "".join(f'[streams.A{i}]\nsubjects = ["a.*.x{i}"]\n' for i in range(n))
    second = "".join(f'[streams.B{j}]\nsubjects = ["a.y{j}.*"]\n' for j in range(n))
    return first + second


def test_overlaps_are_one_line_per_stream_and_capped(tmp_path: Path) -> None:
    """200 x 200 overlapping pairs: one line per overlapping stream, the first
    MAX_LINES_PER_KIND listed, then one line counting the rest."""
    path, lines = problems_of(tmp_path, crossing_streams(200))
    assert len(lines) == MAX_LINES_PER_KIND + 1
    listed, rest = lines[:-1], lines[-1]
    assert all(": streams.B" in line and ".subjects: " in line for line in listed)
    assert all(" overlaps 'a.*.x" in line for line in listed)
    assert rest == (
        f"{path}: streams.*.subjects: {200 - MAX_LINES_PER_KIND} more problems like the "
        f"{MAX_LINES_PER_KIND} above, not listed"
    )


def repeated(each: str, n: int = 50) -> str:
    return "".join(each.format(i=i) for i in range(n))


MARKER_KEYS = ", ".join(f'"kanade.{j}" = "v"' for j in range(50))
REPEATED = {
    "bad-value": (
        repeated('[streams.S{i}]\nsubjects = ["s{i}"]\nmax_age = "x"\n'),
        "streams.*.max_age",
    ),
    "unknown-key": (repeated('[streams.S{i}]\nsubjects = ["s{i}"]\ncolor{i} = 1\n'), "streams.*.*"),
    "kv-value": (repeated("[kv_buckets.b{i}]\nhistory = 0\n"), "kv_buckets.*.history"),
    "bad-name": (repeated('[streams."bad.{i}"]\nsubjects = ["s{i}"]\n'), "streams.*"),
    "top-level-key": (repeated("unknown{i} = 1\n") + BASE, "*"),
    "nats-key": ("[nats]\n" + repeated("k{i} = 1\n") + BASE, "nats.*"),
    "metadata": (BASE + f"metadata = {{ {MARKER_KEYS} }}\n", "streams.*.metadata.*"),
}


@pytest.mark.parametrize(("text", "kind"), REPEATED.values(), ids=REPEATED.keys())
def test_every_kind_of_repeated_problem_is_capped(tmp_path: Path, text: str, kind: str) -> None:
    """Any problem that repeats per resource or per key (50 times here) stops at
    MAX_LINES_PER_KIND lines plus one count line naming the kind."""
    path, lines = problems_of(tmp_path, text)
    assert len(lines) == MAX_LINES_PER_KIND + 1, lines
    assert lines[-1].startswith(f"{path}: {kind}: ")
    assert f": {50 - MAX_LINES_PER_KIND} more problems like the" in lines[-1]


def test_under_the_cap_nothing_is_summarised(tmp_path: Path) -> None:
    """MAX_LINES_PER_KIND problems of one kind are all listed, with no count line."""
    text = "".join(
        f'[streams.S{i}]\nsubjects = ["s{i}"]\nmax_age = "x"\n' for i in range(MAX_LINES_PER_KIND)
    )
    _, lines = problems_of(tmp_path, text)
    assert len(lines) == MAX_LINES_PER_KIND
    assert not any("not listed" in line for line in lines)
