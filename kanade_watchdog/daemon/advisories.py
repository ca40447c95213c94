"""JetStream stream advisories -> marks on the work queue.

`$JS.EVENT.ADVISORY.STREAM.{CREATED,DELETED,UPDATED}.<stream>` is published
by the broker on every stream change. Only well-formed advisories about a
declared stream mark work; anything else (another client's garbage, unknown
names, oversized payloads) is dropped with a debug line. Pure parsing here:
`broker.link` subscribes, and `daemon.main` hands each message to `stream_of`.
"""

from __future__ import annotations

import json
import logging

log = logging.getLogger("kanade_watchdog.advisories")

_PREFIX = "$JS.EVENT.ADVISORY.STREAM."
_ACTIONS = {"CREATED": "create", "DELETED": "delete", "UPDATED": "modify"}
_TYPE = "io.nats.jetstream.advisory.v1.stream_action"
MAX_PAYLOAD = 64 * 1024  # real advisories are ~300 bytes


def stream_of(subject: str, payload: bytes) -> str | None:
    """The stream a genuine stream advisory is about (declared or not), or None
    to ignore it. Whatever happened, the worker reads it and compares."""
    action = stream_action(subject, payload)
    return None if action is None else action[0]


def stream_action(subject: str, payload: bytes) -> tuple[str, str] | None:
    """(stream, action) of a genuine stream advisory, the action being
    "create", "delete" or "modify" as the advisory's own field says; or None
    to ignore it."""
    if not subject.startswith(_PREFIX):
        return None
    verb, _, stream = subject[len(_PREFIX) :].partition(".")
    if verb not in _ACTIONS or not stream:
        log.debug("ignoring advisory on %s: unknown action", subject)
        return None
    if len(payload) > MAX_PAYLOAD:
        log.debug("ignoring advisory on %s: %d-byte payload", subject, len(payload))
        return None
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):  # garbage, or nested past the parser's depth
        log.debug("ignoring advisory on %s: not JSON", subject)
        return None
    if not isinstance(doc, dict) or doc.get("type") != _TYPE or doc.get("stream") != stream:
        log.debug("ignoring advisory on %s: not a stream action for %s", subject, stream)
        return None
    return stream, _ACTIONS[verb]


_CONSUMER_PREFIX = "$JS.EVENT.ADVISORY.CONSUMER."
_CONSUMER_TYPE = "io.nats.jetstream.advisory.v1.consumer_action"
# The server sends no consumer-updated advisory: an edit is found by the resync.
_CONSUMER_ACTIONS = ("CREATED", "DELETED")


def consumer_of(subject: str, payload: bytes) -> str | None:
    """`STREAM/CONSUMER` of a genuine consumer advisory
    (`$JS.EVENT.ADVISORY.CONSUMER.{CREATED,DELETED}.<stream>.<consumer>`), or None."""
    action = consumer_action(subject, payload)
    return None if action is None else action[0]


def consumer_action(subject: str, payload: bytes) -> tuple[str, str] | None:
    """(`STREAM/CONSUMER`, "create" or "delete") of a genuine consumer advisory,
    or None to ignore it."""
    if not subject.startswith(_CONSUMER_PREFIX):
        return None
    parts = subject[len(_CONSUMER_PREFIX) :].split(".")
    if len(parts) != 3 or parts[0] not in _CONSUMER_ACTIONS or not all(parts):
        return None
    _, stream, consumer = parts
    if len(payload) > MAX_PAYLOAD:
        return None
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if (
        not isinstance(doc, dict)
        or doc.get("type") != _CONSUMER_TYPE
        or doc.get("stream") != stream
        or doc.get("consumer") != consumer
    ):
        log.debug("ignoring advisory on %s: not a consumer action", subject)
        return None
    return f"{stream}/{consumer}", _ACTIONS[parts[0]]
