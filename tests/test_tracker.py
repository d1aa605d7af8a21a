"""PayloadTracker on its own (agent/updates.py): settle, validate, report an update ready or rejected,
apply, roll back, the known-good copy, describe. A real payload folder (the stand-in binaries), a fake
clock, and the supervisor's state handed in as the loop does; no dockerd."""

from __future__ import annotations

import os
import shutil

import pytest

from agent.clock import FakeClock
from agent.config import load_config
from agent.state import BACKOFF, RUNNING, STARTING, STOPPED
from agent.updates import REJECTED, UPDATE_READY, PayloadTracker
from agentproc import agent_config, write_config
from harness import make_payload


@pytest.fixture
def tracked(base):
    make_payload(base / "payload")
    cfg = load_config(str(write_config(base / "agent.toml", agent_config(base)))).config
    clock = FakeClock()
    tracker = PayloadTracker(cfg, clock)
    return tracker, clock, base / "payload" / "bin", cfg


def wait_copy(tracker):
    if tracker._saver is not None:
        tracker._saver.join(30)


def running(tracker, clock, pid=100):
    """dockerd started and runs on what the tracker sees now."""
    tracker.observe(STARTING)
    tracker.after_step(STARTING, pid)
    tracker.observe(RUNNING)
    tracker.after_step(RUNNING, pid)
    wait_copy(tracker)      # the known-good copy of what runs is taken in a thread


def touch_binary(bindir, name="containerd"):
    target = bindir / name
    real = os.path.realpath(target)
    target.unlink()
    shutil.copy2(real, target)
    os.chmod(target, 0o755)


def test_a_valid_change_is_reported_ready_once_after_it_settled(tracked):
    tracker, clock, bindir, cfg = tracked
    running(tracker, clock)
    touch_binary(bindir)
    assert tracker.observe(RUNNING).event is None, "not before update_settle_seconds"
    clock.advance(cfg.docker.update_settle_seconds)
    assert tracker.observe(RUNNING).event == UPDATE_READY
    assert tracker.observe(RUNNING).event is None, "reported once; the loop acts on it"
    assert tracker.payload_changed()
    # The loop restarted dockerd; the new one is healthy on the new payload.
    tracker.after_step(STOPPED, None)
    tracker.after_step(STARTING, 101)
    tracker.after_step(RUNNING, 101)
    assert tracker.updates["applied"] == 1 and not tracker.payload_changed()


def test_no_update_before_dockerd_ever_ran(tracked):
    tracker, clock, bindir, cfg = tracked
    touch_binary(bindir)
    clock.advance(60)
    assert tracker.observe(STOPPED).event is None and tracker.observe(STARTING).event is None


def test_an_invalid_change_is_rejected_once_and_dockerd_keeps_running(tracked):
    tracker, clock, bindir, cfg = tracked
    running(tracker, clock)
    (bindir / "runc").unlink()
    assert tracker.observe(RUNNING).event is None, "seen, not settled"
    clock.advance(cfg.docker.update_settle_seconds)
    obs = tracker.observe(RUNNING)
    assert obs.event == REJECTED and not obs.payload.ok and "runc" in "; ".join(obs.payload.problems)
    for _ in range(5):
        assert tracker.observe(RUNNING).event is None
    assert tracker.updates["rejected"] == 1


def test_an_update_that_cannot_become_healthy_is_rolled_back_to_the_known_good_copy(tracked):
    tracker, clock, bindir, cfg = tracked
    running(tracker, clock)
    wait_copy(tracker)
    good = (bindir / "dockerd").read_bytes()
    # A new dockerd that will not start.
    (bindir / "dockerd").unlink()
    (bindir / "dockerd").write_text("#!/bin/sh\nexit 3\n")
    os.chmod(bindir / "dockerd", 0o755)
    tracker.observe(RUNNING)
    clock.advance(cfg.docker.update_settle_seconds)
    assert tracker.observe(RUNNING).event == UPDATE_READY
    tracker.after_step(STOPPED, None)
    tracker.after_step(STARTING, 101)
    tracker.after_step(BACKOFF, None)           # starts copying the known-good payload (a thread) ...
    if tracker._stager is not None:
        tracker._stager.join(30)
    tracker.after_step(BACKOFF, None)           # ... and a later step swaps it in
    assert tracker.updates["rolled_back"] == 1
    assert (bindir / "dockerd").read_bytes() == good
    assert tracker.current.ok


def test_describe_never_runs_an_invalid_payloads_dockerd(tracked):
    tracker, clock, bindir, cfg = tracked
    ran = bindir.parent / "ran"
    (bindir / "dockerd").unlink()
    (bindir / "dockerd").write_text(f"#!/bin/sh\ntouch {ran}\necho 'Docker version 1.0.0, build x'\n")
    os.chmod(bindir / "dockerd", 0o757)          # writable by others: unsafe
    clock.advance(cfg.docker.update_settle_seconds)
    tracker.observe(STOPPED)
    state = tracker.describe()
    assert state.state == "invalid" and state.version == "" and not ran.exists()
    os.chmod(bindir / "dockerd", 0o755)
    clock.advance(cfg.docker.update_settle_seconds)
    tracker.observe(STOPPED)
    assert tracker.describe().version == "1.0.0" and ran.exists()


def test_reconfigure_keeps_the_counters(tracked, base):
    tracker, clock, bindir, cfg = tracked
    running(tracker, clock)
    (bindir / "runc").unlink()
    tracker.observe(RUNNING)
    clock.advance(cfg.docker.update_settle_seconds)
    assert tracker.observe(RUNNING).event == REJECTED
    make_payload(base / "other")
    other = load_config(str(write_config(base / "b.toml", agent_config(base, docker__root=str(base / "other"))))).config
    tracker.reconfigure(other)
    assert tracker.root == str(base / "other") and tracker.current.ok
    assert tracker.updates["rejected"] == 1
