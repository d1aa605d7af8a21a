"""A rig for benchmarks and fault cases: the real agent (`python -m agent run`) supervising its own real
dockerd under a fresh folder, plus what every case checks afterwards ("nothing lost").

Built on the test helpers (tests/agentproc.py, tests/harness.py): same payload stand-in, same dockerd
flags (--bridge=none --iptables=false), same busybox image, containers always --network none
(../shared/reference/test-environment.md).

Layout under the rig's folder: the payload in `opt/docker`, the cpuinfo in `root/`, the shim in `bin/`,
logs and sockets at the top. The agent watches the folders of its files and of the payload's parent
with inotify; keeping logs out of those folders keeps the rig as quiet as a host's `/` and `/opt`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for _p in (str(REPO / "tests"), str(REPO)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from agentproc import AgentProcess, agent_config, pid_alive  # noqa: E402
from harness import docker_cli, make_busybox_tar, make_payload, new_base, ping, unmount_under, wait_for  # noqa: E402

SENTINEL = "sentinel"


def rig_config(base: Path, **overrides) -> dict:
    cfg = agent_config(base, **overrides)
    cfg["docker"]["root"] = str(base / "opt" / "docker")
    cfg["cpuinfo"]["path"] = str(base / "root" / "hijacked-armhf-cpuinfo")
    return cfg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def counters(state: dict) -> dict[str, int]:
    """Every counter in a state.json, flattened: these must never go down while one agent runs."""
    out = {"steps": state.get("steps", 0)}
    for key, value in state.get("reloads", {}).items():
        out[f"reloads.{key}"] = value
    for key, value in state.get("dockerd", {}).get("restarts", {}).items():
        out[f"dockerd.restarts.{key}"] = value
    for key, value in state.get("payload", {}).get("updates", {}).items():
        out[f"payload.updates.{key}"] = value
    for f in state.get("files", []):
        for key, value in f.get("repairs", {}).items():
            out[f"{f['name']}.repairs.{key}"] = value
    return out


class CounterWatch:
    """Reads state.json every 20 ms in a thread and records any counter that went down while the same
    agent pid kept running (a new agent starts its counters at zero, by design)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "state.json"
        self.violations: list[str] = []
        self.samples = 0
        self._last: tuple[int, dict[str, int]] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                state = json.loads(self.path.read_text())
            except (OSError, ValueError):
                continue
            self.samples += 1
            now = (state.get("pid", 0), counters(state))
            if self._last and self._last[0] == now[0]:
                for key, value in now[1].items():
                    before = self._last[1].get(key, 0)
                    if value < before:
                        self.violations.append(f"{key} went from {before} to {value} (agent pid {now[0]})")
            self._last = now

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


class Rig:
    def __init__(self, prefix: str = "rig", image: bool = True, sentinel: bool = True, metrics: bool = False,
                 small_fs: str = "", **overrides):
        """`small_fs`: a tmpfs size (e.g. "64k") mounted where the cpuinfo lives, to fill it up."""
        self.base = new_base(prefix)
        self.config = rig_config(self.base, **overrides)
        if metrics:
            # As shipped: the agent's endpoint and dockerd's own metrics (proxied), on free loopback ports.
            self.config["metrics"] = {"listen": f"127.0.0.1:{free_port()}", "docker_metrics": True,
                                      "docker_metrics_listen": f"127.0.0.1:{free_port()}"}
        self.want_image = image
        self.want_sentinel = sentinel and image
        self.metrics = metrics
        self.agent: AgentProcess | None = None
        self.watch: CounterWatch | None = None
        self.sentinel_pid: int | None = None
        (self.base / "root").mkdir()
        self.small_fs = small_fs
        if small_fs:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={small_fs},mode=0755", "tmpfs",
                            str(self.base / "root")], check=True)
        make_payload(Path(self.config["docker"]["root"]))

    # -- life cycle ----------------------------------------------------------------------------------
    def start(self) -> "Rig":
        self.agent = self.new_agent().start()
        self.agent.wait_running(60)
        self.wait_files_ok()
        self.watch = CounterWatch(self.agent.run_dir)
        if self.want_image:
            tar = make_busybox_tar(self.base / "bb.tar")
            self.docker("import", str(tar), "bb:local")
        if self.want_sentinel:
            # Exits on SIGTERM (PID 1 ignores it otherwise), so a graceful dockerd stop does not wait 10 s.
            self.docker("run", "-d", "--restart", "always", "--network", "none", "--name", SENTINEL, "bb:local",
                        "sh", "-c", "trap 'exit 0' TERM; sleep 1000000 & wait")
            self.sentinel_pid = self.sentinel()["Pid"]
        return self

    def new_agent(self) -> AgentProcess:
        return AgentProcess(self.base, config=self.config, payload=False, metrics=self.metrics)

    def close(self) -> None:
        if self.watch:
            self.watch.stop()
        if self.agent:
            self.agent.stop()
        for c in ("containerd-shim-runc-v2",):
            # Shims of containers outlive dockerd by design; end the ones under this rig only.
            out = subprocess.run(["pgrep", "-f", f"{c} .*{self.base}"], capture_output=True, text=True).stdout
            for pid in out.split():
                try:
                    os.kill(int(pid), 9)
                except OSError:
                    pass
        # The small tmpfs, and the namespace the agent keeps for its dockerds (<run_dir>/ns).
        unmount_under(self.base)
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "Rig":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- views ---------------------------------------------------------------------------------------
    @property
    def sock(self) -> str:
        return self.agent.sock

    @property
    def metrics_url(self) -> str:
        return f"http://{self.config['metrics']['listen']}/metrics"

    @property
    def cpuinfo(self) -> Path:
        return Path(self.config["cpuinfo"]["path"])

    @property
    def shim(self) -> Path:
        return Path(self.config["shim"]["path"])

    @property
    def wrapper(self) -> Path:
        return Path(self.config["runtime"]["dir"]) / "runc"

    @property
    def payload(self) -> Path:
        return Path(self.config["docker"]["root"])

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return docker_cli(self.sock, *args, check=check, timeout=timeout)

    def state(self) -> dict:
        return self.agent.state() or {}

    def counters(self) -> dict[str, int]:
        return counters(self.state())

    def file_state(self, name: str) -> dict:
        return next(f for f in self.state().get("files", []) if f["name"] == name)

    def wait_files_ok(self, timeout: float = 30, shim: bool = True) -> None:
        def ok() -> bool:
            s = self.agent.state()
            return bool(s and s.get("files")) and all(f["ok"] for f in s["files"] if shim or f["name"] != "shim")
        wait_for(ok, timeout, 0.02, "the managed files in place")

    def dockerd_pid(self) -> int | None:
        return self.agent.dockerd_pid()

    # -- logs ----------------------------------------------------------------------------------------
    def mark(self) -> int:
        """A position in the agent's log; `log_since` and `wait_log` look only after it."""
        return len(self.agent.log())

    def log_since(self, mark: int) -> str:
        return self.agent.log()[mark:]

    def wait_log(self, mark: int, pattern: str, timeout: float = 30) -> str:
        import re

        rx = re.compile(pattern)
        try:
            return wait_for(lambda: (m := rx.search(self.log_since(mark))) and m.group(0), timeout, 0.05,
                            f"log /{pattern}/")
        except TimeoutError:
            raise AssertionError(f"no /{pattern}/ in the agent log within {timeout}s; new lines:\n"
                                 f"{self.log_since(mark)[-3000:]}") from None

    # -- nothing lost --------------------------------------------------------------------------------
    @staticmethod
    def _on_disk_problem(path: Path, mode: int) -> str:
        try:
            st = os.lstat(path)
        except OSError as exc:
            return f"{path}: {exc.strerror}"
        if not stat.S_ISREG(st.st_mode):
            return f"{path} is not a regular file"
        if (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) != (0, 0, mode):
            return f"{path} is {st.st_uid}:{st.st_gid} {stat.S_IMODE(st.st_mode):04o}, not 0:0 {mode:04o}"
        return ""

    def sentinel(self) -> dict:
        out = self.docker("inspect", SENTINEL, check=False, timeout=30)
        if out.returncode != 0:
            return {}
        return json.loads(out.stdout)[0]["State"]

    def assert_nothing_lost(self, dockerd_restarted: bool = False, timeout: float = 60, shim: bool = True) -> None:
        """dockerd answers, both files are right, counters never went down, and the sentinel container
        still runs: the same process when dockerd was not replaced, restarted by dockerd's `--restart
        always` when it was (no live-restore: a new dockerd restarts what ran before). `shim=False`:
        the payload is invalid, so by design no shim execs its client (agent/loop.py `_shim_client`)."""
        wait_for(lambda: ping(self.sock), timeout, 0.05, "dockerd answers /_ping")
        self.wait_files_ok(timeout, shim)
        problems: list[str] = []

        def on_disk_right() -> bool:
            problems[:] = [p for p in (self._on_disk_problem(self.cpuinfo, 0o644),
                                       self._on_disk_problem(self.shim, 0o755) if shim else "",
                                       self._on_disk_problem(self.wrapper, 0o755)) if p]
            return not problems

        try:
            # state.json may predate a change made just before this check: the disk has the last word.
            wait_for(on_disk_right, timeout, 0.02, "both files right on disk")
        except TimeoutError:
            raise AssertionError("; ".join(problems)) from None
        assert not self.watch.violations, f"counters went down: {self.watch.violations}"
        if self.want_sentinel:
            if dockerd_restarted:
                wait_for(lambda: self.sentinel().get("Running"), timeout, 0.1, "sentinel container running again")
            else:
                state = self.sentinel()
                assert state.get("Running"), f"sentinel container not running: {state}"
                assert state.get("Pid") == self.sentinel_pid, \
                    f"sentinel restarted (pid {self.sentinel_pid} -> {state.get('Pid')})"
            self.sentinel_pid = self.sentinel().get("Pid")


def proc_stat(pid: int) -> tuple[int, int, int, int]:
    """(utime, stime, cutime, cstime) in clock ticks, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12]), int(fields[13]), int(fields[14])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for pid {pid}")


def rss_parts(pid: int) -> tuple[int, int]:
    """(RssAnon, RssFile + RssShmem) in bytes: what the process allocated vs mapped files it shares."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "RssShmem"):
            fields[key] = int(value.split()[0]) * 1024
    return fields["RssAnon"], fields["RssFile"] + fields["RssShmem"]


__all__ = ["Rig", "CounterWatch", "counters", "rig_config", "proc_stat", "rss_bytes", "rss_parts", "pid_alive",
           "ping", "wait_for", "docker_cli", "new_base", "REPO"]
