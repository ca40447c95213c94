"""The `export` command's arguments, apart from the command itself.

`cli` builds every command's parser on each start; the command (`export`,
which loads tomlkit) is imported only when it runs.
"""

from __future__ import annotations

import argparse

KIND_CHOICES = ("stream", "kv", "object")  # `export.KINDS` maps them to resource kinds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--match",
        metavar="GLOB",
        action="append",
        default=[],
        help="only resources whose name or stream name matches (repeatable)",
    )
    parser.add_argument(
        "--kind",
        action="append",
        choices=KIND_CHOICES,
        default=[],
        help="only this kind (repeatable)",
    )
    parser.add_argument(
        "-o", "--output", metavar="FILE", help="write FILE (atomically) instead of standard output"
    )
    parser.add_argument(
        "--merge",
        metavar="FILE",
        help="FILE's text unchanged plus what the broker holds that FILE does not declare",
    )
    parser.add_argument(
        "--server",
        metavar="URL",
        action="append",
        default=[],
        help="connect here instead of the config's [nats] servers (repeatable)",
    )
