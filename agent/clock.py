"""The clock facade: every timing decision in the agent reads time through one of these."""

from __future__ import annotations

import time


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


class FakeClock:
    """For unit tests of pure logic: time moves only when the test says so."""

    def __init__(self, start: float = 1000.0, wall: float = 1_700_000_000.0):
        self._mono = start
        self._wall_offset = wall - start

    def monotonic(self) -> float:
        return self._mono

    def time(self) -> float:
        return self._mono + self._wall_offset

    def advance(self, seconds: float) -> None:
        self._mono += seconds
