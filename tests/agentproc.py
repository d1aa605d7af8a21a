"""Runs the real agent (`python -m agent run`) as a subprocess against a real dockerd, for tests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness import REPO, NotifySocket, make_payload, read_state, wait_for


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(v)


def write_config(path: Path, sections: dict) -> Path:
    lines = []
    for name, keys in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in keys.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def agent_config(base: Path, **overrides) -> dict:
    """A config whose every path lives under `base`, with timeouts short enough for tests."""
    cfg = {
        "agent": {"state_dir": str(base / "state"), "run_dir": str(base / "run"), "check_interval_seconds": 1.0},
        "docker": {"root": str(base / "payload"), "host": f"unix://{base}/d.sock", "data_root": str(base / "data"),
                   "exec_root": str(base / "exec"), "pidfile": str(base / "d.pid"),
                   "args": ["--bridge=none", "--iptables=false"], "log_file": str(base / "dockerd.log"),
                   "health_interval_seconds": 0.5, "health_timeout_seconds": 0.5, "health_failures": 2,
                   "start_timeout_seconds": 30.0, "stop_timeout_seconds": 5.0,
                   "restart_backoff_initial_seconds": 0.5, "restart_backoff_max_seconds": 2.0,
                   "restart_stable_seconds": 30.0, "update_settle_seconds": 0.5},
        "cpuinfo": {"path": str(base / "hijacked-armhf-cpuinfo")},
        "shim": {"path": str(base / "bin" / "docker")},
        "runtime": {"dir": str(base / "state" / "runtime")},
        "metrics": {"docker_metrics": False},
    }
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        cfg.setdefault(section, {})[name] = value
    return cfg


class AgentProcess:
    def __init__(self, base: Path, config: dict | None = None, payload: bool = True, metrics: bool = False,
                 extra_env: dict | None = None, prefix: tuple[str, ...] = ()):
        self.base = base
        self.prefix = tuple(prefix)      # a command the agent runs under (it execs the agent: same pid)
        (base / "bin").mkdir(exist_ok=True)
        if payload and not (base / "payload").exists():
            make_payload(base / "payload")
        self.config = config or agent_config(base)
        self.config_path = write_config(base / "agent.toml", self.config)
        n = 0
        while (base / f"notify{n}.sock").exists():
            n += 1
        self.notify = NotifySocket(base / f"notify{n}.sock")
        self.log_path = base / f"agent{n}.log"
        self.metrics = metrics
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen | None = None

    @property
    def sock(self) -> str:
        return self.config["docker"]["host"][len("unix://"):]

    @property
    def run_dir(self) -> Path:
        return Path(self.config["agent"]["run_dir"])

    def start(self) -> "AgentProcess":
        env = dict(os.environ, NOTIFY_SOCKET=self.notify.path, PYTHONPATH=str(REPO), **self.extra_env)
        env.pop("JOURNAL_STREAM", None)
        cmd = [*self.prefix, sys.executable, "-m", "agent", "--config", str(self.config_path), "run"]
        if not self.metrics:
            cmd.append("--no-metrics")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, cwd=str(REPO))
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 30, count: int = 1) -> list[str]:
        rx = re.compile(pattern)

        def found():
            lines = [l for l in self.log().splitlines() if rx.search(l)]
            return lines if len(lines) >= count else None

        try:
            return wait_for(found, timeout, 0.05, f"log line /{pattern}/ x{count}")
        except TimeoutError:
            raise TimeoutError(f"no /{pattern}/ x{count} in agent log within {timeout}s:\n{self.log()[-4000:]}")

    def state(self) -> dict | None:
        return read_state(self.run_dir)

    def dockerd_pid(self) -> int | None:
        s = self.state()
        return s["dockerd"]["pid"] if s and s["dockerd"]["state"] == "running" else None

    def wait_running(self, timeout: float = 60, other_than: int | None = None) -> int:
        return wait_for(lambda: (p := self.dockerd_pid()) and p != other_than and p, timeout, 0.05,
                        "dockerd running")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Whatever the test did, never leave a dockerd behind.
        pidfile = Path(self.config["docker"]["pidfile"])
        try:
            pid = int(pidfile.read_text())
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30, 0.1, "leftover dockerd exit")
        except (OSError, ValueError, TimeoutError):
            pass
        self.notify.close()


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pid: int, timeout: float = 30) -> None:
    wait_for(lambda: not pid_alive(pid), timeout, 0.05, f"pid {pid} gone")


def now() -> float:
    return time.monotonic()
