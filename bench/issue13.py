"""Every table of issue 13 ("close the tails and scale to 10,000 resources")
in one run, each against its nats-py floor measured in the same run.

  1, 7  bench.scale     full pass and a heal during it; idle cost at scale
  2, 6  bench.oneshot   apply creating thousands of streams; plan process time
  3, 4  bench.recovery  kill -9 with a wiped store; broker down at start
  8     bench.storm     1,000 deletes per second
  5     heal latency on a quiet machine: `bench.run`'s heal table (300 trials per
        row, the daemon beside bench/floor.py), run in a subprocess with --heal

Black box: these modules start `python -m kanade_watchdog` as a process and
never import it. Each table prints the command that reproduces it alone.

Run: python -m bench.issue13 [--quick] [--long] [--heal] [--only scale,storm,...]
     (make bench-scale; QUICK=1 for the short run)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable

from bench import oneshot, recovery, scale, storm
from bench.procs import REPO, env, machine_note

TABLES: dict[str, Callable[[list[str] | None], None]] = {
    "oneshot": oneshot.main,
    "recovery": recovery.main,
    "storm": storm.main,
    "scale": scale.main,
}

HEAL = (
    "import sys; from bench.run import heal_table; "
    "print('\\n'.join(heal_table(int(sys.argv[1]))), flush=True)"
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few rounds")
    parser.add_argument("--long", action="store_true", help="add the 240 s outage")
    parser.add_argument("--heal", action="store_true", help="add bench.run's heal table")
    parser.add_argument("--only", default=",".join(TABLES), help="comma-separated modules")
    args = parser.parse_args(argv)
    print(f"<!-- bench.issue13 {' '.join(sys.argv[1:])}: {machine_note()} -->", flush=True)
    for name in args.only.split(","):
        sub = ["--quick"] if args.quick else []
        if name == "recovery" and args.long:
            sub.append("--long")
        TABLES[name](sub)
    if args.heal:
        trials = "30" if args.quick else "300"
        print(f"\n### Heal latency, quiet machine (bench.run heal_table({trials}))\n", flush=True)
        done = subprocess.run(
            [sys.executable, "-c", HEAL, trials], cwd=REPO, env=env(), check=False, timeout=3600
        )
        if done.returncode:
            print(f"\n(bench.run's heal table failed with exit {done.returncode}; see stderr)")


if __name__ == "__main__":
    main()
