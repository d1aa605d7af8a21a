"""Percentiles, the machine line, and the markdown tables `bench/run` and `faults/run` print."""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile: a value that was actually measured (p99 of 50 samples is the max)."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


@dataclass
class Row:
    figure: str
    measured: str
    target: str
    met: bool | None       # None: informational, no target
    note: str = ""

    @property
    def verdict(self) -> str:
        return "-" if self.met is None else ("met" if self.met else "MISSED")


def machine() -> str:
    docker = subprocess.run(["dockerd", "--version"], capture_output=True, text=True).stdout.strip()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; nproc {len(os.sched_getaffinity(0))}; "
            f"kernel {platform.release()} {platform.machine()}; Python {platform.python_version()}; {docker}; "
            f"load average at start {load}")


def table(headers: list[str], rows: list[list[str]]) -> str:
    cells = [headers] + rows
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows[0:]])


def rows_table(rows: list[Row]) -> str:
    return table(["figure", "measured", "target", "result", "note"],
                 [[r.figure, r.measured, r.target, r.verdict, r.note] for r in rows])
