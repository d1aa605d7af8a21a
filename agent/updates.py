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
import threading

from dataclasses import dataclass

from . import payload as payloads
from . import payload_tree
from .ratelimit import RateLimitedLog
from .state import BACKOFF, RUNNING, UPDATE_RESULTS, PayloadState

log = logging.getLogger("armhf-agent.payload")

KNOWN_GOOD_RETRY_FIRST = 10.0     # seconds after a failed known-good copy (a full disk, say) ...
KNOWN_GOOD_RETRY_MAX = 600.0      # ... doubling up to this
COPY_POLL_SECONDS = 0.25          # how soon the loop looks again while a copy runs


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
        self._saved: str | None = None          # how the last copy ended: "kept", "changed", "refused", "failed"
        self._retry_at = 0.0                    # a failed copy is taken again from then on
        self._retry_delay = KNOWN_GOOD_RETRY_FIRST
        self._stager: threading.Thread | None = None
        self._staged: str | None = None         # why the rollback copy failed, None when it is ready
        self._rollback_waits: str | None = None
        self._copy_log = RateLimitedLog(log, clock, window=KNOWN_GOOD_RETRY_MAX)
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
        self._collect_copy()
        if dockerd_state == RUNNING and self.pending is None and self.current.ok \
                and self.running_fp == self.seen_fp and self.known_good_fp != self.seen_fp \
                and self.clock.monotonic() >= self._retry_at:
            self._save_known_good()

    def payload_changed(self) -> bool:
        """The payload differs from the one dockerd runs: restarting onto it is this tracker's job
        (settled, validated, counted as an update, rolled back), not a reload's."""
        return self.pending is not None or (self.running_fp is not None and self.seen_fp != self.running_fp)

    # -- known-good and rollback -------------------------------------------------------------------
    def _save_known_good(self) -> None:
        """Copies the payload aside in a thread (a 75 MB dockerd takes ~1.5 s to copy: the loop must
        keep repairing meanwhile). The copy is `payload_tree`'s: regular files and folders only,
        root-owned, modes it chose; a validated binary that is a symlink (to a distribution's binary)
        is copied as the file it names, anything else a payload_tree cannot hold refuses the copy."""
        if self._saver is not None and self._saver.is_alive():
            return
        fp = self.seen_fp
        self.known_good_fp = fp          # in progress: not started again for the same payload
        self._saved = None

        def copy() -> None:
            self._saved = self._copy_known_good(fp)

        self._saver = threading.Thread(target=copy, name="known-good-copy", daemon=True)
        self._saver.start()

    def _copy_known_good(self, fp: tuple) -> str:
        try:
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        except OSError:
            pass                                 # reported by the copy below
        dest = self.known_good_dir
        tmp, old = dest + ".tmp", dest + ".old"
        try:
            checked = payloads.inspect(self.root)
            if not checked.ok or _quick_fingerprint(self.root) != fp:
                # Only a payload that is valid as it is copied is ever copied.
                log.info("payload changed before it could be copied; no known-good copy of it taken")
                return "changed"
            root = self.root.rstrip("/")
            follow = {os.path.relpath(p, root): os.path.realpath(p)
                      for p in checked.binaries.values() if os.path.islink(p)}
            payload_tree.remove_tree(tmp)        # left by an agent killed mid-copy
            payload_tree.copy_tree(self.root, tmp, follow=follow)
            if _quick_fingerprint(self.root) != fp:
                log.info("payload changed while it was being copied; known-good copy discarded")
                return "changed"
            copied = payloads.inspect(tmp)
            if not copied.ok:
                raise payload_tree.TreeError("the copy is not a valid payload: " + "; ".join(copied.problems))
            payload_tree.remove_tree(old)
            if os.path.lexists(dest):
                os.rename(dest, old)
            os.rename(tmp, dest)
            payload_tree.remove_tree(old)
        except payload_tree.TreeError as exc:
            # Not retried: the same payload would be refused the same way; a changed one is copied anew.
            log.error("cannot keep a known-good copy of %s: %s", self.root, exc)
            return "refused"
        except OSError as exc:
            self._copy_log("known-good", logging.ERROR, "cannot keep a known-good copy of %s in %s: %s "
                           "(will retry in %.0f s)", self.root, dest, exc, self._retry_delay)
            return "failed"
        finally:
            for leftover in (tmp, old):
                try:
                    payload_tree.remove_tree(leftover)
                except OSError as exc:
                    log.error("cannot remove %s: %s", leftover, exc)
        self._copy_log.clear("known-good")
        log.info("payload: kept a known-good copy in %s", dest)
        return "kept"

    def _collect_copy(self) -> None:
        """The loop's side of a finished copy: a failed one is taken again later, the delay doubling
        from KNOWN_GOOD_RETRY_FIRST up to KNOWN_GOOD_RETRY_MAX."""
        if self._stager is not None and not self._stager.is_alive() and self.pending is None:
            # The update it was for got healthy after all (or was replaced): nothing to roll back.
            self._stager, self._staged, self._rollback_waits = None, None, None
            payload_tree.remove_tree(self.root.rstrip("/") + ".rollback")
        if self._saver is None or self._saver.is_alive():
            return
        self._saver, saved, self._saved = None, self._saved, None
        if saved == "failed":
            self.known_good_fp = None
            self._retry_at = self.clock.monotonic() + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, KNOWN_GOOD_RETRY_MAX)
        elif saved == "kept":
            self._retry_delay = KNOWN_GOOD_RETRY_FIRST

    def _roll_back(self) -> None:
        """Called on each step in BACKOFF while the update is pending. The known-good copy is first
        copied next to docker.root (same filesystem) in a thread, then, on a later step, swapped in by
        two renames: the loop never copies, and the known-good copy stays for the next failure."""
        for busy, why in ((self._saver, "the known-good copy being taken"), (self._stager, "its staged copy")):
            if busy is not None and busy.is_alive():
                if self._rollback_waits != why:
                    log.info("update failed; rollback waits for %s to finish", why)
                    self._rollback_waits = why
                return
        if self._stager is None:
            if not os.path.isdir(self.known_good_dir):
                self.pending = None
                log.error("update failed and no known-good payload is kept: nothing to roll back to")
                return
            self._staged = "the copy did not finish"
            self._stager = threading.Thread(target=self._stage_rollback, name="rollback-copy", daemon=True)
            self._stager.start()
            self._rollback_waits = "its staged copy"
            log.info("update failed; copying the known-good payload next to %s to roll back to it", self.root)
            return
        self._stager, staged, self._staged, self._rollback_waits = None, self._staged, None, None
        self.pending = None
        root = self.root.rstrip("/")
        staging, failed = root + ".rollback", root + ".failed"
        if staged is not None:
            payload_tree.remove_tree(staging)
            log.error("update failed, and the known-good copy %s cannot be rolled back to: %s", self.known_good_dir,
                      staged)
            return
        try:
            payload_tree.remove_tree(failed)
            os.rename(root, failed)
            try:
                os.rename(staging, root)
            except OSError:
                os.rename(failed, root)
                raise
        except OSError as exc:
            log.error("rollback of %s failed: %s", self.root, exc)
            payload_tree.remove_tree(staging)
            return
        self.updates["rolled_back"] += 1
        self.current = payloads.inspect(self.root)
        self.seen_fp = _quick_fingerprint(self.root)
        self.rejected_fp = None
        self.known_good_fp = self.seen_fp        # it is the known-good copy's own content
        self.changed_at = self.clock.monotonic() - self.settle
        log.error("update: new payload could not become healthy; rolled back to the known-good copy "
                  "(failed payload kept in %s)", failed)

    def _stage_rollback(self) -> None:
        """The thread's part: `<root>.rollback`, a payload_tree copy of the known-good copy (which must
        still be one this agent wrote: a tampered one is not rolled back to), checked as a payload."""
        staging = self.root.rstrip("/") + ".rollback"
        try:
            problem = payload_tree.audit(self.known_good_dir)
            if problem:
                raise payload_tree.TreeError(f"it is not one this agent would run ({problem})")
            payload_tree.remove_tree(staging)
            payload_tree.copy_tree(self.known_good_dir, staging)
            checked = payloads.inspect(staging)
            if not checked.ok:
                raise payload_tree.TreeError("its copy is not a valid payload: " + "; ".join(checked.problems))
        except (payload_tree.TreeError, OSError) as exc:
            try:
                payload_tree.remove_tree(staging)
            except OSError:
                pass
            self._staged = str(exc) or type(exc).__name__
            return
        self._staged = None

    # -- helpers for the loop ----------------------------------------------------------------------
    def folders(self) -> set[str]:
        root = self.root.rstrip("/")
        return {os.path.dirname(root), root} | {os.path.join(root, d) for d in payloads.SEARCH_DIRS if d}

    def wake_in(self) -> float:
        now = self.clock.monotonic()
        wait = 3600.0
        if self.running_fp is not None and self.seen_fp != self.running_fp and self.pending is None:
            wait = max(0.05, self.settle - (now - self.changed_at))
        if self._saver is not None or self._stager is not None:
            # Its outcome is collected (a failure scheduled for retry, a waiting rollback done) soon.
            wait = min(wait, COPY_POLL_SECONDS)
        elif self.known_good_fp is None and self._retry_at > now:
            wait = min(wait, self._retry_at - now)
        return wait

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
