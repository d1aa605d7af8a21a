"""Docker updates: notice a changed payload, wait for it to settle, validate, restart onto it, and roll
back to the last known-good payload when the new one cannot become healthy.

    running on A --(binaries change, stable for update_settle_seconds)--> validate
        invalid -> "rejected" (dockerd keeps running on what it loaded; status shows why)
        valid   -> UPDATE_READY: the loop restarts dockerd ("update")
                   -> RUNNING on B: "applied", B becomes known-good
                   -> BACKOFF before RUNNING: restore A: "rolled_back"

The tracker records and reports what it observed; it never restarts dockerd itself. The loop
(agent.loop, `Agent._decide_restarts`) is the one owner of restart decisions.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading

from dataclasses import dataclass

from . import payload as payloads
from .state import BACKOFF, RUNNING, UPDATE_RESULTS, PayloadState

log = logging.getLogger("armhf-agent.payload")


# What `observe` reports besides the payload.
UPDATE_READY = "update-ready"    # a new, valid payload has settled: dockerd should restart onto it
REJECTED = "rejected"            # a new payload has settled and is invalid: dockerd keeps running


@dataclass(frozen=True)
class Observation:
    payload: payloads.Payload
    event: str | None = None     # UPDATE_READY, REJECTED or None


def _quick_fingerprint(root: str) -> tuple:
    return payloads.fingerprint(payloads.Payload(root, payloads.find(root), ()))


class PayloadTracker:
    def __init__(self, config, clock):
        self.clock = clock
        self.updates = {r: 0 for r in UPDATE_RESULTS}
        self._saver: threading.Thread | None = None
        self.reconfigure(config)

    def reconfigure(self, config) -> None:
        """A (re)loaded config; the counters are kept. A new docker.root is a new payload to watch."""
        root, state_dir = config.docker.root, config.agent.state_dir
        self.settle = config.docker.update_settle_seconds
        if getattr(self, "root", None) == root and getattr(self, "state_dir", None) == state_dir:
            return
        self.root, self.state_dir = root, state_dir
        self.known_good_dir = os.path.join(state_dir, "payload-known-good")
        self.current = payloads.inspect(self.root)
        self.seen_fp = _quick_fingerprint(self.root)
        self.changed_at = self.clock.monotonic()
        self.running_fp: tuple | None = None
        self.pid_seen: int | None = None
        self.pending: tuple | None = None
        self.rejected_fp: tuple | None = None
        self.known_good_fp: tuple | None = None
        self._version_cache: tuple[tuple, str] | None = None
        self._last_problems: tuple[str, ...] = ()

    # -- observation -------------------------------------------------------------------------------
    def observe(self, dockerd_state: str) -> Observation:
        """Looks at the payload; `dockerd_state` is the supervisor's state (updates happen only under a
        RUNNING dockerd: before it ran, a changed payload is simply what it starts from)."""
        now = self.clock.monotonic()
        fp = _quick_fingerprint(self.root)
        if fp != self.seen_fp:
            self.seen_fp = fp
            self.changed_at = now
            self.current = payloads.inspect(self.root)
        elif not self.current.ok and now - self.changed_at >= self.settle:
            # Ownership or modes fixed by the operator do not change the fingerprint's stat times
            # reliably everywhere: re-inspect while invalid.
            self.current = payloads.inspect(self.root)
        if self.current.problems != self._last_problems:
            if self.current.problems:
                log.error("payload %s not usable: %s", self.root, "; ".join(self.current.problems))
            elif self._last_problems:
                log.info("payload %s is complete and safe now", self.root)
            self._last_problems = self.current.problems
        settled = now - self.changed_at >= self.settle
        if (dockerd_state == RUNNING and self.running_fp is not None and fp != self.running_fp
                and settled and self.pending is None and fp != self.rejected_fp):
            if not self.current.ok:
                self.updates["rejected"] += 1
                self.rejected_fp = fp
                log.error("update rejected: %s; dockerd keeps running on the binaries it loaded",
                          "; ".join(self.current.problems))
                return Observation(self.current, REJECTED)
            self.pending = fp
            return Observation(self.current, UPDATE_READY)
        return Observation(self.current)

    def after_step(self, dockerd_state: str, pid: int | None) -> None:
        """Records what the supervisor did this step: a new dockerd runs the payload seen now; an update
        that reached RUNNING is applied, one that fell into BACKOFF is rolled back."""
        if pid != self.pid_seen:
            self.pid_seen = pid
            if pid is not None:
                self.running_fp = self.seen_fp
        if self.pending is not None:
            if dockerd_state == RUNNING and self.running_fp == self.pending:
                self.updates["applied"] += 1
                self.pending = None
                # A rejection is remembered against the payload dockerd ran on; on a new one, the same
                # broken state seen again is a new rejection (logged and counted).
                self.rejected_fp = None
                log.info("update: applied; dockerd pid %s healthy on the new payload", pid)
            elif dockerd_state == BACKOFF:
                self._roll_back()
        if dockerd_state == RUNNING and self.pending is None and self.current.ok \
                and self.running_fp == self.seen_fp and self.known_good_fp != self.seen_fp:
            self._save_known_good()

    def payload_changed(self) -> bool:
        """The payload differs from the one dockerd runs: restarting onto it is this tracker's job
        (settled, validated, counted as an update, rolled back), not a reload's."""
        return self.pending is not None or (self.running_fp is not None and self.seen_fp != self.running_fp)

    # -- known-good and rollback -------------------------------------------------------------------
    def _save_known_good(self) -> None:
        """Copies the payload aside in a thread (a 75 MB dockerd takes ~1.5 s to copy: the loop must
        keep repairing meanwhile). A copy whose source changed while it was taken is discarded."""
        if self._saver is not None and self._saver.is_alive():
            return
        fp = self.seen_fp
        self.known_good_fp = fp          # in progress: not started again for the same payload

        def copy() -> None:
            tmp = self.known_good_dir + ".tmp"
            try:
                shutil.rmtree(tmp, ignore_errors=True)
                os.makedirs(os.path.dirname(tmp), mode=0o700, exist_ok=True)
                shutil.copytree(self.root, tmp, symlinks=True)
                if _quick_fingerprint(self.root) != fp:
                    shutil.rmtree(tmp, ignore_errors=True)
                    log.info("payload changed while it was being copied; known-good copy discarded")
                    return
                if os.path.lexists(self.known_good_dir):
                    shutil.rmtree(self.known_good_dir)
                os.rename(tmp, self.known_good_dir)
            except OSError as exc:
                log.error("cannot keep a known-good copy of %s in %s: %s", self.root, self.known_good_dir, exc)
                return
            log.info("payload: kept a known-good copy in %s", self.known_good_dir)

        self._saver = threading.Thread(target=copy, name="known-good-copy", daemon=True)
        self._saver.start()

    def _roll_back(self) -> None:
        self.pending = None
        if self._saver is not None:
            self._saver.join()
        if not os.path.isdir(self.known_good_dir):
            log.error("update failed and no known-good payload is kept: nothing to roll back to")
            return
        staging = self.root.rstrip("/") + ".rollback"
        failed = self.root.rstrip("/") + ".failed"
        try:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(self.known_good_dir, staging, symlinks=True)
            shutil.rmtree(failed, ignore_errors=True)
            os.rename(self.root, failed)
            os.rename(staging, self.root)
        except OSError as exc:
            log.error("rollback of %s failed: %s", self.root, exc)
            return
        self.updates["rolled_back"] += 1
        self.current = payloads.inspect(self.root)
        self.seen_fp = _quick_fingerprint(self.root)
        self.rejected_fp = None
        self.known_good_fp = self.seen_fp
        self.changed_at = self.clock.monotonic() - self.settle
        log.error("update: new payload could not become healthy; rolled back to the known-good copy "
                  "(failed payload kept in %s)", failed)

    # -- helpers for the loop ----------------------------------------------------------------------
    def folders(self) -> set[str]:
        root = self.root.rstrip("/")
        return {os.path.dirname(root), root} | {os.path.join(root, d) for d in payloads.SEARCH_DIRS if d}

    def wake_in(self) -> float:
        if self.running_fp is not None and self.seen_fp != self.running_fp and self.pending is None:
            return max(0.05, self.settle - (self.clock.monotonic() - self.changed_at))
        return 3600.0

    def describe(self) -> PayloadState:
        p = self.current
        if not os.path.isdir(self.root):
            state = "missing"
        else:
            state = "ok" if p.ok else "invalid"
        version = ""
        # Only a valid payload's dockerd is ever run: an unsafe one (writable by others) may hold
        # anybody's code, and `--version` would run it as root (issue 12).
        if p.dockerd and p.ok:
            if self._version_cache is None or self._version_cache[0] != self.seen_fp:
                self._version_cache = (self.seen_fp, payloads.version(p.dockerd))
            version = self._version_cache[1]
        return PayloadState(root=self.root, state=state, problem="; ".join(p.problems), version=version,
                            arch=payloads.describe_arch(p.dockerd), updates=dict(self.updates))
