"""Repeated errors are logged once per window, with a count of what was suppressed."""

from __future__ import annotations

import logging


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, clock, window: float = 60.0):
        self.logger = logger
        self.clock = clock
        self.window = window
        self._last: dict[str, tuple[float, int]] = {}

    def __call__(self, key: str, level: int, msg: str, *args, exc_info=None) -> None:
        now = self.clock.monotonic()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.window:
            self._last[key] = (last[0], last[1] + 1)
            return
        suppressed = last[1] if last else 0
        self._last[key] = (now, 0)
        if suppressed:
            msg += f" (repeated {suppressed}x in the last {self.window:g}s)"
        self.logger.log(level, msg, *args, exc_info=exc_info)

    def clear(self, key: str) -> None:
        self._last.pop(key, None)
