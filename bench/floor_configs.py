"""The 25 stream configs the floor (`bench/floor.py`) creates, as data.

The floor must not import the project, so what it creates is checked in as
`floor_streams.json`: the project's own create configs for the repository's
config.toml, minus the watchdog's ownership marker (the floor is not a
watchdog). `tests/test_bench_floor.py` fails when the two drift apart;
regenerate with

    .venv/bin/python -m bench.floor_configs
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kanade_watchdog.config import load as cfg
from kanade_watchdog.core import desired

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).with_name("floor_streams.json")
MARKER_PREFIX = "kanade."


def expected(config_path: Path = REPO / "config.toml") -> list[dict[str, Any]]:
    """The create config of every declared resource, in declaration order."""
    out = []
    for res in cfg.load(str(config_path)).resources:
        config = desired.create_config(res)
        metadata = {
            k: v for k, v in config.pop("metadata", {}).items() if not k.startswith(MARKER_PREFIX)
        }
        if metadata:
            config["metadata"] = metadata
        out.append(config)
    return out


def render(configs: list[dict[str, Any]]) -> str:
    return json.dumps(configs, indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    DATA.write_text(render(expected()))
    print(f"wrote {DATA}")
