"""`armhf-agent systemd-stop UNIT MAINPID`: the unit's ExecStop.

systemd does not tell a service whether it is being stopped or restarted, but while ExecStop runs the
unit's job is visible: `systemctl list-jobs` shows `UNIT restart running` for a restart and `UNIT stop
running` for a stop (checked under systemd 252). A restart must not take the builds down with it, so
the agent is told to exit leaving dockerd running (SIGUSR2), and the new agent adopts it; any other
stop (systemctl stop, shutdown, unknown) stops dockerd too (SIGTERM). Either way this waits for the
agent to exit: when ExecStop returns, systemd signals whatever is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time


def job_type(unit: str) -> str:
    try:
        out = subprocess.run(["systemctl", "list-jobs", "--no-legend", "--plain", unit],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 3 and words[1] == unit:
            return words[2]
    return ""


def systemd_stop(unit: str, pid: int | None, timeout: float = 3600) -> int:
    if not pid:
        # The agent is already gone (it handed dockerd over at an upgrade, or was told to exit): nothing
        # to signal, and a stop that finds nothing to stop has succeeded.
        print("armhf-agent systemd-stop: the agent is not running; nothing to stop", flush=True)
        return 0
    restart = job_type(unit) == "restart"
    sig = signal.SIGUSR2 if restart else signal.SIGTERM
    what = "restart: leaving dockerd running for the next agent" if restart else "stop: stopping dockerd too"
    print(f"armhf-agent systemd-stop: {what}", flush=True)
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return 0
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    return 0
