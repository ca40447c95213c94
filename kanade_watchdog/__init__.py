"""kanade-watchdog: keeps declared NATS JetStream resources in place.

Layout, pure core first: `units`, `subjects`, `config` (the declaration),
`desired` (what each resource must look like), `plan` (desired + observed ->
decisions). Edges: `broker` (JetStream API), `connection`, `apply`,
`render`, `cli`; the daemon: `daemon`, `worker`, `backoff`, `triggers`,
`notify`, `logs`/`journal`.
"""

__version__ = "0.1.0"
