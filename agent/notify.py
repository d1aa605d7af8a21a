"""systemd's notify protocol: READY, STATUS, WATCHDOG, RELOADING, STOPPING.

sdnotify connects once in its constructor and every call is a silent no-op without NOTIFY_SOCKET,
so a plain foreground run works unchanged. It never reads WATCHDOG_USEC: we do, and ping at half of it
(../shared/reference/packaging-and-systemd.md). WATCHDOG=1 is sent only from the loop after a completed
step, so a stuck loop is what the watchdog catches.
"""

from __future__ import annotations

import os
import time

import sdnotify


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None, clock=None):
        environ = os.environ if environ is None else environ
        self._notifier = sdnotify.SystemdNotifier()
        if self._notifier.socket is not None:
            # Never block the loop on systemd: a full notify queue drops a message (sdnotify swallows
            # the error) instead of hanging the supervisor of a running daemon.
            self._notifier.socket.setblocking(False)
        self._clock = clock
        self.watchdog_interval: float | None = None
        usec = environ.get("WATCHDOG_USEC")
        pid = environ.get("WATCHDOG_PID")
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6 / 2
        self._last_watchdog = 0.0
        self._last_status = None
        self.ready_sent = False

    def _send(self, message: str) -> None:
        self._notifier.notify(message)

    def ready(self) -> None:
        if not self.ready_sent:
            self._send("READY=1")
            self.ready_sent = True

    def status(self, line: str) -> None:
        if line != self._last_status:
            self._send(f"STATUS={line}")
            self._last_status = line

    def watchdog(self, now: float) -> None:
        if self.watchdog_interval and now - self._last_watchdog >= self.watchdog_interval:
            self._send("WATCHDOG=1")
            self._last_watchdog = now

    def watchdog_due_in(self, now: float) -> float:
        """Seconds until the next WATCHDOG=1 is due (the loop must not sleep past it)."""
        if not self.watchdog_interval:
            return 3600.0
        return max(0.0, self._last_watchdog + self.watchdog_interval - now)

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd >= 253 match the reload with this notification.
        self._send(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def reloaded(self) -> None:
        self._send("READY=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def extend_timeout(self, seconds: float) -> None:
        """Asks systemd to wait `seconds` more (from now) for the start or stop in progress."""
        self._send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")
