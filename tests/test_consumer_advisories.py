"""Consumer advisories mark work only when genuine: the subject's stream and
consumer agree with the payload, the type is a consumer action, the verb is
CREATED or DELETED (the server sends no consumer-updated advisory)."""

from __future__ import annotations

import json

import pytest

from kanade_watchdog.daemon.advisories import MAX_PAYLOAD, consumer_of, stream_of

TYPE = "io.nats.jetstream.advisory.v1.consumer_action"


def payload(stream: str = "S", consumer: str = "c", kind: str = TYPE) -> bytes:
    return json.dumps({"type": kind, "stream": stream, "consumer": consumer}).encode()


@pytest.mark.parametrize("verb", ["CREATED", "DELETED"])
def test_a_genuine_consumer_advisory_names_stream_and_consumer(verb: str) -> None:
    """`STREAM/CONSUMER` from a well-formed advisory; never read as a stream advisory."""
    subject = f"$JS.EVENT.ADVISORY.CONSUMER.{verb}.S.c"
    assert consumer_of(subject, payload()) == "S/c"
    assert stream_of(subject, payload()) is None


@pytest.mark.parametrize(
    ("subject", "body"),
    [
        ("$JS.EVENT.ADVISORY.CONSUMER.UPDATED.S.c", payload()),
        ("$JS.EVENT.ADVISORY.CONSUMER.CREATED.S", payload()),
        ("$JS.EVENT.ADVISORY.CONSUMER.CREATED.S.c.x", payload()),
        ("$JS.EVENT.ADVISORY.CONSUMER.CREATED.S.c", payload(stream="T")),
        ("$JS.EVENT.ADVISORY.CONSUMER.CREATED.S.c", payload(consumer="d")),
        ("$JS.EVENT.ADVISORY.CONSUMER.CREATED.S.c", payload(kind="other")),
        ("$JS.EVENT.ADVISORY.CONSUMER.CREATED.S.c", b"not json"),
        ("$JS.EVENT.ADVISORY.CONSUMER.CREATED.S.c", b"[" * 100_000),
        ("$JS.EVENT.ADVISORY.CONSUMER.CREATED.S.c", b" " * (MAX_PAYLOAD + 1)),
        ("$JS.EVENT.ADVISORY.STREAM.CREATED.S", payload()),
    ],
)
def test_anything_else_is_ignored(subject: str, body: bytes) -> None:
    """Garbage, mismatches, unknown verbs and oversized payloads mark nothing."""
    assert consumer_of(subject, body) is None
