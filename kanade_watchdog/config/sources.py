"""Mirrors, sources and subject mappings: parsed, bound, checked and compared.

Pure. The parsers turn what an operator writes into the server's JSON shape
in canonical form (`fieldvalues.Table` / `Items`), so a declared value and
the broker's compare equal when they mean the same: `domain = "hub"` becomes
`external = {api = "$JS.hub.API"}`, a start time is written in UTC, and the
entries of `sources` (owned as a whole) are compared without regard to order.
KV buckets take their mirror and sources in the ADR-8 shape: the origin is a
bucket name (stream `KV_<name>`), a mirror has no subjects of its own and
serves direct gets for its origin (`mirror_direct`), and a bucket sourced
from another gets the transform `$KV.<origin>.> -> $KV.<bucket>.>` that
clients expect (`bind_bucket_sources` adds it: it depends on the bucket's
own name). `shape_problem` and `immutable` tell the planner what it cannot
change in place; `origins` tells `order` and `fieldchecks` what a stream
waits for; `readable_origin` writes a held origin back for `export`.
`streamfields` lists the parsers; `config`, `desired` and `plan` call in.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import date, time
from typing import Any

from kanade_watchdog.config.problems import Invalid, Part, unknown_key
from kanade_watchdog.config.problems import key as _key
from kanade_watchdog.config.values import stream_name
from kanade_watchdog.model.fieldvalues import Items, Table, canon, plain, utc_time
from kanade_watchdog.model.mappings import destination_problem, source_problem
from kanade_watchdog.model.subjects import (
    bucket_name_problem,
    stream_name_problem,
    subjects_overlap,
)

Parser = Callable[[Any], Any]

KV_PREFIX = "KV_"
MAX_SEQ = 2**64 - 1


# --- nested tables, every problem at its own key path -------------------------------------


def _table(value: Any, known: Mapping[str, Parser], *, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"must be a table ({what})")
    parts: list[Part] = []
    out: dict[str, Any] = {}
    for k, v in value.items():
        parser = known.get(k)
        if parser is None:
            parts.append(Part(f".{_key(k)}", unknown_key(k, known)))
            continue
        try:
            out[k] = parser(v)
        except Invalid as exc:
            parts.extend(Part(f".{k}{p.at}", p.reason, p.got) for p in exc.parts)
        except (ValueError, TypeError, OverflowError) as exc:
            # A TOML date or time is shown as written, not as a Python object.
            shown = v.isoformat() if isinstance(v, date | time) else v
            parts.append(Part(f".{k}", str(exc), shown))
    if parts:
        raise Invalid(parts)
    return out


def _list(value: Any, item: Parser, *, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"must be a list of tables ({what})")
    parts: list[Part] = []
    out: list[Any] = []
    for i, v in enumerate(value):
        try:
            out.append(item(v))
        except Invalid as exc:
            parts.extend(Part(f"[{i}]{p.at}", p.reason, p.got) for p in exc.parts)
        except (ValueError, TypeError, OverflowError) as exc:
            parts.append(Part(f"[{i}]", str(exc), v))
    if parts:
        raise Invalid(parts)
    return out


def _require(parsed: Mapping[str, Any], *keys: str) -> None:
    missing = [Part(f".{k}", "is required") for k in keys if k not in parsed]
    if missing:
        raise Invalid(missing)


# --- leaf values ---------------------------------------------------------------------------


def _bucket_name(value: Any) -> str:
    problem = bucket_name_problem(value) if isinstance(value, str) else "must be a string"
    if problem:
        raise ValueError(f"must be a bucket name: {problem}")
    return str(value)


def _subject(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a subject")
    problem = source_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value or not value.isprintable():
        raise ValueError("must be a non-empty string of printable characters")
    return value


def _start_seq(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SEQ:
        raise ValueError("must be a sequence number of 1 or more")
    return value


def _start_time(value: Any) -> str:
    return utc_time(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _domain(value: Any) -> str:
    problem = stream_name_problem(value) if isinstance(value, str) else "must be a string"
    if problem:
        raise ValueError(problem)
    return str(value)


def _external(value: Any) -> Table:
    parsed = _table(value, {"api": _text, "deliver": _text}, what="api and deliver prefixes")
    _require(parsed, "api")
    return Table(canon(parsed))


def _mapping(value: Any) -> Table:
    """{src, dest}: `dest` must be a valid mapping of `src`."""
    parsed = _table(value, {"src": _subject, "dest": _text}, what="src and dest")
    _require(parsed, "src", "dest")
    problem = destination_problem(parsed["src"], parsed["dest"])
    if problem:
        raise Invalid([Part(".dest", problem, parsed["dest"])])
    return Table(canon(parsed))


def _transforms(value: Any) -> Items:
    items = _list(value, _mapping, what="{src, dest} mappings")
    for i, a in enumerate(items):
        for b in items[:i]:
            if subjects_overlap(a["src"], b["src"]):
                raise Invalid([Part(f"[{i}].src", f"overlaps src {b['src']!r}", a["src"])])
    out = canon(items, "subject_transforms")
    assert isinstance(out, Items)
    return out


# --- sources and mirrors ---------------------------------------------------------------------

_ORIGIN_COMMON: dict[str, Parser] = {
    "opt_start_seq": _start_seq,
    "opt_start_time": _start_time,
    "external": _external,
    "domain": _domain,
}
_STREAM_ORIGIN: dict[str, Parser] = {
    "name": stream_name,
    **_ORIGIN_COMMON,
    "filter_subject": _subject,
    "subject_transforms": _transforms,
}
_BUCKET_ORIGIN: dict[str, Parser] = {"name": _bucket_name, **_ORIGIN_COMMON}


def _origin(value: Any, known: Mapping[str, Parser], *, bucket: bool) -> Table:
    what = "name, opt_start_seq, opt_start_time, " + (
        "external or domain" if bucket else "filter_subject, subject_transforms, external or domain"
    )
    parsed = _table(value, known, what=what)
    _require(parsed, "name")
    if "domain" in parsed:
        if "external" in parsed:
            raise Invalid([Part(".domain", "set domain or external, not both")])
        # What the clients do with a domain: reach its JetStream API.
        parsed["external"] = Table({"api": f"$JS.{parsed.pop('domain')}.API"})
    if "filter_subject" in parsed and parsed.get("subject_transforms"):
        raise Invalid(
            [
                Part(
                    ".filter_subject",
                    "goes in each subject_transforms src when there are transforms "
                    "(the broker refuses both)",
                    parsed["filter_subject"],
                )
            ]
        )
    if bucket:
        parsed["name"] = KV_PREFIX + parsed["name"]
    return Table(canon(parsed))


def stream_origin(value: Any) -> Table:
    """A stream's `mirror`, or one entry of its `sources`."""
    return _origin(value, _STREAM_ORIGIN, bucket=False)


def bucket_origin(value: Any) -> Table:
    """A KV bucket's `mirror` or source: the origin named by its bucket name."""
    return _origin(value, _BUCKET_ORIGIN, bucket=True)


def _origins(item: Parser) -> Parser:
    def parse(value: Any) -> Items:
        items = _list(value, item, what="sources, each a table with a name")
        for i, a in enumerate(items):
            if a in items[:i]:
                raise Invalid([Part(f"[{i}]", "is listed twice (the broker refuses duplicates)")])
        out = canon(items, "sources")
        assert isinstance(out, Items)
        return out

    return parse


stream_sources = _origins(stream_origin)
bucket_sources = _origins(bucket_origin)


def republish(value: Any) -> Table:
    parsed = _table(
        value, {"src": _subject, "dest": _text, "headers_only": _bool}, what="src, dest"
    )
    _require(parsed, "src", "dest")
    problem = destination_problem(parsed["src"], parsed["dest"])
    if problem:
        raise Invalid([Part(".dest", problem, parsed["dest"])])
    return Table(canon(parsed))


subject_transform = _mapping


def consumer_limits(value: Any, *, duration: Parser, count: Parser) -> Table:
    parsed = _table(
        value,
        {"inactive_threshold": duration, "max_ack_pending": count},
        what="inactive_threshold, max_ack_pending",
    )
    return Table(canon(parsed))


# --- binding to the resource, and checks on the whole declaration ------------------------------


def _bucket_of(stream: str) -> str:
    return stream[len(KV_PREFIX) :] if stream.startswith(KV_PREFIX) else stream


def bind_bucket_sources(bucket: str, sources: Items) -> Items:
    """A KV bucket's sources with the transforms ADR-8 gives them: the origin's
    keys land under this bucket's subjects, unless the origin is a bucket of
    the same name in another domain (then the subjects already match)."""
    bound = []
    for source in sources:
        origin = _bucket_of(source["name"])
        if "external" in source and origin == bucket:
            bound.append(source)
            continue
        mapping = {"src": f"$KV.{origin}.>", "dest": f"$KV.{bucket}.>"}
        bound.append(Table(canon({**source, "subject_transforms": [mapping]})))
    out = canon(bound, "sources")
    assert isinstance(out, Items)
    return out


def local(origin: Mapping[str, Any]) -> bool:
    """An origin in this JetStream domain (no external API prefix)."""
    return "external" not in origin


def origins(declared: Mapping[str, Any]) -> list[str]:
    """The local streams a declaration mirrors or sources (the ones it waits for)."""
    out: list[str] = []
    mirror = declared.get("mirror")
    if isinstance(mirror, Mapping) and local(mirror):
        out.append(str(mirror["name"]))
    for source in declared.get("sources") or ():
        if isinstance(source, Mapping) and local(source):
            out.append(str(source["name"]))
    return out


# --- what the planner may not change -------------------------------------------------------


def shape_problem(
    stream: str, declared: Mapping[str, Any], config: Mapping[str, Any]
) -> str | None:
    """Why the stream the broker holds cannot become what is declared in place."""
    mirror = config.get("mirror")
    if mirror and "mirror" not in declared:
        origin = mirror.get("name", "?") if isinstance(mirror, Mapping) else "?"
        return (
            f"stream {stream} is a mirror of {origin} on the broker but is declared without "
            "one; the watchdog does not turn a mirror into a plain stream (declare its "
            "mirror to manage it)"
        )
    if not mirror and "mirror" in declared:
        return (
            f"stream {stream} exists but is not a mirror; a stream cannot become a mirror in "
            "place (remove it by hand to let it be created as one)"
        )
    return None


def immutable(wire: str, current: Any, wanted: Any) -> str | None:
    """Why the broker cannot make this change of a field in place (measured on
    nats-server 2.15.1), or None."""
    if wire == "mirror":
        return (
            "a mirror's configuration (origin, filter, start, transforms) cannot change in "
            "place: the broker refuses it"
        )
    if wire in ("allow_msg_ttl", "allow_msg_schedules") and current and not wanted:
        return f"{wire} cannot be turned off once set"
    if wire == "allow_msg_counter" and bool(current) != bool(wanted):
        return "allow_msg_counter is set at create and cannot change"
    return None


# --- back to what an operator writes (export) --------------------------------------------------

_DOMAIN_API = re.compile(r"\$JS\.([^.*>\s]+)\.API")


def readable_origin(value: Any, *, bucket: str | None = None) -> Any:
    """A mirror or source as the broker holds it, written the way the config
    takes it: empty entries dropped, `external` of a domain as `domain`, and
    for a KV bucket (`bucket` = its name) the origin by bucket name, without
    the transform ADR-8 implies. What has no config form is returned as it
    is, and the config parser then refuses it (export names it as left out)."""
    if not isinstance(value, Mapping):
        return value
    out: dict[str, Any] = plain(canon(value))
    external = out.get("external")
    if isinstance(external, dict) and set(external) == {"api"}:
        match = _DOMAIN_API.fullmatch(str(external["api"]))
        if match:
            del out["external"]
            out["domain"] = match.group(1)
    if bucket is not None:
        name = str(out.get("name", ""))
        if name.startswith(KV_PREFIX):
            out["name"] = name[len(KV_PREFIX) :]
        implied = [{"src": f"$KV.{out['name']}.>", "dest": f"$KV.{bucket}.>"}]
        if out.get("subject_transforms") == implied:
            del out["subject_transforms"]
    return out
