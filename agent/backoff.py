"""Restart backoff: the first restart is immediate, then initial, 2x, 4x ... capped; a run that
stayed up for `stable_seconds` forgets the history (kubelet's crash-loop backoff, in miniature)."""

from __future__ import annotations

import math


class Backoff:
    def __init__(self, initial: float, cap: float, stable_seconds: float):
        self.initial = initial
        self.cap = cap
        self.stable_seconds = stable_seconds
        self.failures = 0

    def next_delay(self) -> float:
        """Delay before the next start, counting this failure."""
        self.failures += 1
        return self.current()

    def current(self) -> float:
        if self.failures <= 1:
            return 0.0
        # Doublings beyond the cap change nothing: bounding the exponent keeps a crash loop that lasts
        # for days from overflowing a float (2.0 ** 1024), which once stopped the loop (issue 12).
        doublings = min(self.failures - 2, math.ceil(math.log2(max(self.cap / self.initial, 1.0))) + 1)
        return min(self.cap, self.initial * 2.0 ** doublings)

    def note_uptime(self, seconds_up: float) -> None:
        if seconds_up >= self.stable_seconds:
            self.failures = 0
