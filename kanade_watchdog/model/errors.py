"""Domain exceptions: the only errors that cross a module boundary.

The type IS the policy. `ConfigError` stops a start (exit 78) or a reload
(old config kept). `BrokerError.transient` tells the worker whether to retry
soon with backoff (timeouts, no meta leader, connection loss) or slowly and
quietly (out of storage, immutable field, permission denied).
`broker.py` translates nats-py's exceptions and JetStream API error bodies
into these, chaining the cause.
"""

from __future__ import annotations

# JetStream API error codes we explain or classify (nats-server errors.json).
ERR_NO_SUITABLE_PEERS = 10005
ERR_NO_META_LEADER = 10008
ERR_INSUFFICIENT_MEMORY = 10028
ERR_INSUFFICIENT_STORAGE = 10047
ERR_IMMUTABLE_FIELD = 10052
ERR_NAME_IN_USE = 10058
ERR_STREAM_NOT_FOUND = 10059
ERR_SUBJECTS_OVERLAP = 10065
ERR_REPLICAS_NOT_SUPPORTED = 10074

ERR_STORE_CREATE_FAILED = 10049
ERR_PEDANTIC = 10157  # pedantic mode: the broker would have adjusted the config

# Answers that restate a fact about the request or the broker's capacity:
# repeating the request soon cannot change them. Everything else the broker
# may say (503 elections, 10049 while a deleted stream's files are still
# being removed, and codes newer than this list) is retried soon.
_PERMANENT_ERR_CODES = frozenset(
    {
        ERR_INSUFFICIENT_MEMORY,
        ERR_INSUFFICIENT_STORAGE,
        ERR_IMMUTABLE_FIELD,
        ERR_NAME_IN_USE,
        ERR_SUBJECTS_OVERLAP,
        ERR_REPLICAS_NOT_SUPPORTED,
    }
)


class WatchdogError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(WatchdogError):
    """The configuration file is unusable. Each problem is one line:
    `<file>: <key path>: <what is wrong>, got <value>`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class BrokerError(WatchdogError):
    """Anything that went wrong talking to the broker."""

    transient: bool = True

    def __init__(self, message: str, *, subject: str = "") -> None:
        self.subject = subject
        super().__init__(message)


class BrokerUnavailable(BrokerError):
    """No connection, a timeout, or no responder: try again soon."""

    transient = True


class PermissionDenied(BrokerError):
    """The broker refused our credentials the right to use a subject."""

    transient = False


class ApiError(BrokerError):
    """The JetStream API answered with an error body."""

    def __init__(self, *, code: int, err_code: int, description: str, subject: str) -> None:
        self.code = code
        self.err_code = err_code
        self.description = description
        super().__init__(f"{description} (code {code}/{err_code})", subject=subject)
        # A 400 is a request the broker will never accept as sent, except "no
        # suitable peers" (10005), which holds only while nodes are down.
        self.transient = err_code == ERR_NO_SUITABLE_PEERS or (
            err_code not in _PERMANENT_ERR_CODES and code != 400
        )


class ResourceError(WatchdogError):
    """A broker error placed on one resource, with the explanation an operator
    needs (what to change) rather than the raw API text."""

    def __init__(
        self,
        resource: str,
        explanation: str,
        *,
        cause: BrokerError,
        related: tuple[str, ...] = (),
    ) -> None:
        self.resource = resource
        self.cause = cause
        self.transient = cause.transient
        self.related = related  # other streams the failure depends on (the overlapping one)
        super().__init__(f"{resource}: {explanation}")
