"""Each scenario's numbers, and the Markdown tables docs/RELIABILITY.md shows.

A scenario fills one `Figure` as it goes and `publish`es it once its checks
passed; at the end of the session `tests/chaos/conftest.py` writes the
tables to $KANADE_CHAOS_REPORT when that is set (`make chaos` sets it). A
hostile-input scenario also says what was attempted and what came of it
(`hostile`), written only after its checks proved it; those make the
"hostile input" table.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

MIB = 1024 * 1024


@dataclass
class Figure:
    scenario: str
    faults: int = 0  # faults injected
    survived: int = 0  # faults after which the daemon was alive and converged again
    heals: int = 0  # resources the daemon created or updated back
    acked: int = 0  # messages the producer had acknowledged
    lost: int = 0  # acknowledged messages missing or different at the end
    worst_converge: float = 0.0  # seconds, fault over -> everything in sync again
    times: list[float] = field(default_factory=list)  # every time to converge
    destructive: int = 0  # DELETE/PURGE requests by the daemon (audit)
    writes_in_sync: int = 0  # CREATE/UPDATE by the daemon while in sync (audit)
    rss_start: int = 0  # bytes
    rss_end: int = 0
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0
    attempt: str = ""  # hostile input: what was tried
    result: str = ""  # and what came of it, as the checks proved it

    def hostile(self, attempt: str, result: str) -> None:
        self.attempt, self.result = attempt, result

    def converged(self, seconds: float) -> None:
        self.survived += 1
        self.times.append(seconds)
        self.worst_converge = max(self.worst_converge, seconds)

    @property
    def median_converge(self) -> float:
        return statistics.median(self.times) if self.times else 0.0


PUBLISHED: list[Figure] = []


def publish(figure: Figure) -> None:
    figure.seconds = time.monotonic() - figure.started
    PUBLISHED.append(figure)


def _rss(figure: Figure) -> str:
    if not figure.rss_start:
        return "-"
    return f"{figure.rss_start / MIB:.1f} -> {figure.rss_end / MIB:.1f}"


def seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def table(figures: list[Figure]) -> str:
    head = (
        "| scenario | faults injected | survived | heals | acked msgs | lost | "
        "median converge | worst converge | deletes/purges | writes in sync | "
        "daemon RSS MiB | wall |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = [
        f"| {f.scenario} | {f.faults} | {f.survived} | {f.heals} | {f.acked or '-'} | "
        f"{f.lost if f.acked else '-'} | {seconds(f.median_converge)} | "
        f"{seconds(f.worst_converge)} | {f.destructive} | "
        f"{f.writes_in_sync} | {_rss(f)} | {f.seconds:.0f} s |"
        for f in figures
    ]
    return head + "\n".join(rows) + "\n"


def hostile_table(figures: list[Figure]) -> str:
    head = (
        "| scenario | attempt | result | attempts | deletes/purges | acked msgs lost |\n"
        "|---|---|---|---:|---:|---:|\n"
    )
    rows = [
        f"| {f.scenario} | {f.attempt} | {f.result} | {f.faults} | {f.destructive} | "
        f"{f'{f.lost} of {f.acked}' if f.acked else '-'} |"
        for f in figures
        if f.attempt
    ]
    return head + "\n".join(rows) + "\n"


def write_report(path: Path, figures: list[Figure], *, header: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    hostile = hostile_table(figures) if any(f.attempt for f in figures) else ""
    path.write_text(
        f"{header}\n\n{table(figures)}" + (f"\n## Hostile input\n\n{hostile}" if hostile else "")
    )
    path.with_suffix(".json").write_text(json.dumps([asdict(f) for f in figures]))
