"""Every table of issue 13 ("close the tails and scale to 10,000 resources")
in one run, each against its nats-py floor measured in the same run.

  2, 6  bench.oneshot   apply creating thousands of streams; plan process time
  3, 4  bench.recovery  kill -9 with a wiped store; broker down at start
  5     bench.heal      heal latency on a quiet broker, 300 trials per row
  8     bench.storm     1,000 deletes per second
  1, 7  bench.scale     full pass and a heal during it; idle cost at scale

Black box: these modules start `python -m kanade_watchdog` as a process and
never import it. Each table prints the command that reproduces it alone.
`bench.passprofile` (py-spy over one full pass) is run on its own.

Run: python -m bench.issue13 [--quick] [--long] [--only oneshot,recovery,...]
     (make bench-scale; QUICK=1 for the short run)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from bench import heal, oneshot, recovery, scale, storm
from bench.procs import machine_note

TABLES: dict[str, Callable[[list[str] | None], None]] = {
    "oneshot": oneshot.main,
    "recovery": recovery.main,
    "heal": heal.main,
    "storm": storm.main,
    "scale": scale.main,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few rounds")
    parser.add_argument("--long", action="store_true", help="add the 240 s outage")
    parser.add_argument("--only", default=",".join(TABLES), help="comma-separated modules")
    args = parser.parse_args(argv)
    shown = " ".join(sys.argv[1:] if argv is None else argv)
    print(f"<!-- python -m bench.issue13 {shown}: {machine_note()} -->", flush=True)
    for name in args.only.split(","):
        sub = ["--quick"] if args.quick else []
        if name == "recovery" and args.long:
            sub.append("--long")
        TABLES[name](sub)


if __name__ == "__main__":
    main()
