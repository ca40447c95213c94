"""kanade-watchdog: keeps declared NATS JetStream resources in place.

Layers, each importing only those below it (README "Layout", `.importlinter`):
`cli` > `commands` | `daemon` > `report` | `broker` > `core` > `config` > `model`.
"""

__version__ = "0.1.0"
