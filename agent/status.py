"""`armhf-agent status`: is the armhf daemon healthy, and if not, why.

Reads the snapshot the running agent publishes each loop step (`<agent.run_dir>/state.json`,
agent/state.py) and checks that the agent behind it is alive and making progress. Exit codes follow
LSB `status`: 0 healthy, 1 degraded, 3 not running, 4 status unknown (unreadable state file).
The `--json` form is described by agent/data/status.schema.json; keys are only ever added.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from agent.config import AgentConfig
from agent.processes import read_cmdline
from agent.state import RUNNING, STATE_FILE, Snapshot

EXIT_HEALTHY = 0
EXIT_DEGRADED = 1
EXIT_NOT_RUNNING = 3
EXIT_UNKNOWN = 4
STATUS_SCHEMA_VERSION = 1
AGENT_PROGRAM = "armhf-agent"


@dataclass(frozen=True)
class AgentLiveness:
    snapshot: Snapshot | None
    running: bool
    problem: str           # why it is not running, or why the state file cannot be read
    unreadable: bool = False


def _is_agent_process(cmdline: list[str]) -> bool:
    # The console script (`.../armhf-agent run`) or the module form (`python -m agent ...`).
    if any(os.path.basename(arg) == AGENT_PROGRAM for arg in cmdline):
        return True
    return any(a == "-m" and b.split(".")[0] == "agent" for a, b in zip(cmdline, cmdline[1:]))


def read_agent(config: AgentConfig, proc_root: str) -> AgentLiveness:
    path = Path(config.agent.run_dir, STATE_FILE)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        snapshot = Snapshot.from_dict(data)
    except FileNotFoundError:
        return AgentLiveness(None, False, f"no state file {path}")
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        return AgentLiveness(None, False, f"cannot read state file {path}: {exc}", unreadable=True)
    cmdline = read_cmdline(proc_root, snapshot.pid) if snapshot.pid > 0 else None
    if cmdline is None:
        return AgentLiveness(snapshot, False, f"agent pid {snapshot.pid} from {path} is gone")
    if not _is_agent_process(cmdline):
        return AgentLiveness(snapshot, False,
                             f"pid {snapshot.pid} from {path} is now {' '.join(cmdline)!r}, not {AGENT_PROGRAM}")
    return AgentLiveness(snapshot, True, "")


def stuck_after_seconds(config: AgentConfig) -> float:
    # Three missed steps plus slack for a slow step (a dockerd restart within one step).
    return 3 * config.agent.check_interval_seconds + 30


def degradations(config: AgentConfig, snapshot: Snapshot, now: float) -> list[str]:
    problems = []
    age = now - snapshot.last_step_at
    if age > stuck_after_seconds(config):
        problems.append(f"agent stuck: last loop step {_duration(age)} ago")
    d = snapshot.dockerd
    if d.state != RUNNING:
        problems.append(f"dockerd {d.state}" + (f": {d.reason}" if d.reason else ""))
    elif not d.ping_ok:
        problems.append("dockerd not answering /_ping")
    p = snapshot.payload
    if p.state != "ok":
        problems.append(f"payload {p.state}" + (f": {p.problem}" if p.problem else ""))
    for f in snapshot.files:
        if not f.ok:
            problems.append(f"{f.name} {f.path} not ok" + (f": {f.problem}" if f.problem else ""))
    h = snapshot.host_docker
    if h.enabled and (h.problem or not h.wired):
        problems.append(f"host_docker: {h.problem or h.unit + ' runs without the wrapper'}")
    # Exec mode and daemon variant only mean something for an armhf payload; on a development host
    # the payload is a stand-in for the host's own architecture.
    if p.arch == "arm":
        if snapshot.exec_mode != "native":
            problems.append(f"exec mode {snapshot.exec_mode}" + (f": {snapshot.exec_detail}" if snapshot.exec_detail else ""))
        expected = config.cpuinfo.variant
        if d.platform_arch == "arm" and d.platform_variant != expected:
            problems.append(f"daemon platform {_platform(snapshot)}, expected linux/arm/{expected}")
    return problems


@dataclass(frozen=True)
class StatusReport:
    exit_code: int
    status: str            # "healthy" | "degraded" | "not-running" | "unknown"
    problems: list[str]
    snapshot: Snapshot | None
    now: float


def read_status(config: AgentConfig, now: float, proc_root: str = "/proc") -> StatusReport:
    live = read_agent(config, proc_root)
    if not live.running:
        if live.unreadable:
            return StatusReport(EXIT_UNKNOWN, "unknown", [live.problem], None, now)
        return StatusReport(EXIT_NOT_RUNNING, "not-running", [live.problem], None, now)
    problems = degradations(config, live.snapshot, now)
    if problems:
        return StatusReport(EXIT_DEGRADED, "degraded", problems, live.snapshot, now)
    return StatusReport(EXIT_HEALTHY, "healthy", [], live.snapshot, now)


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _since(now: float, at: float | None) -> float | None:
    return None if at is None else round(now - at, 3)


def _platform(snapshot: Snapshot) -> str:
    d = snapshot.dockerd
    parts = [x for x in (d.platform_os, d.platform_arch, d.platform_variant) if x]
    return "/".join(parts) or "unknown"


def status_line(snapshot: Snapshot) -> str:
    """The one-line STATUS= the agent sends systemd (`systemctl status` shows it). "up since" rather
    than "up 3h": STATUS= is sent on change only, one line per state change."""
    d = snapshot.dockerd
    restarts = sum(d.restarts.values())
    if d.state == RUNNING:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(d.started_at or 0))
        line = f"dockerd running (pid {d.pid}, up since {since}), restarts {restarts}"
    else:
        line = f"dockerd {d.state}: {d.reason}" if d.reason else f"dockerd {d.state}"
    bad = [f.name for f in snapshot.files if not f.ok]
    if bad:
        line += f"; not in place: {', '.join(bad)}"
    return line[:200]


def render_human(report: StatusReport) -> str:
    s = report.snapshot
    if s is None:
        label = "not running" if report.status == "not-running" else "status unknown"
        return f"agent: {label}: {report.problems[0]}\n"
    now = report.now
    d, p = s.dockerd, s.payload
    lines = [f"agent: {s.state} (pid {s.pid}, up {_duration(now - s.started_at)}, "
             f"last step {_duration(now - s.last_step_at)} ago): {report.status}"]
    dockerd = f"dockerd: {d.state}"
    if d.pid:
        dockerd += f" (pid {d.pid}" + (f", up {_duration(now - d.started_at)}" if d.started_at else "") + ")"
    if d.reason:
        dockerd += f": {d.reason}"
    dockerd += f"; restarts {sum(d.restarts.values())}"
    if d.last_restart_reason:
        dockerd += f" (last: {d.last_restart_reason}"
        dockerd += f", {_duration(now - d.last_restart_at)} ago)" if d.last_restart_at else ")"
    lines.append(dockerd)
    lines.append(f"payload: {p.state} {p.version or 'version unknown'} ({p.arch or 'arch unknown'}) at {p.root}; "
                 f"platform {_platform(s)}")
    files = []
    for f in s.files:
        text = f"{f.name} {'ok' if f.ok else 'NOT OK: ' + (f.problem or 'unknown')}"
        if f.last_repair_reason:
            text += f" (last repair: {f.last_repair_reason}"
            text += f", {_duration(now - f.last_repair_at)} ago)" if f.last_repair_at else ")"
        files.append(text)
    lines.append("files: " + ("; ".join(files) or "none reported"))
    lines.append(f"cpuinfo: {_cpuinfo_line(s)}")
    lines.append(f"exec: {s.exec_mode}" + (f" ({s.exec_detail})" if s.exec_detail else ""))
    if s.host_docker.enabled:
        h = s.host_docker
        lines.append(f"host docker: {h.unit} " + (f"wired (dockerd pid {h.pid})" if h.wired else "not wired")
                     + (f": {h.problem}" if h.problem else ""))
    lines.append(f"metrics: {s.metrics_url or 'off'}")
    lines.extend(f"degraded: {problem}" for problem in report.problems)
    return "\n".join(lines) + "\n"


def _cpuinfo_line(s: Snapshot) -> str:
    c = s.cpuinfo
    if not c.profile:
        return "profile unknown (an agent older than cpuinfo profiles)"
    if not c.features:
        return f"profile {c.profile}: not rendered (see files)"
    hides = f"; hides {' '.join(c.hidden_features)}" if c.hidden_features else ""
    return f"profile {c.profile} (linux/arm/{c.variant}): {' '.join(c.features)}{hides}"


def render_json(report: StatusReport) -> dict[str, Any]:
    s = report.snapshot
    doc: dict[str, Any] = {
        "schema": STATUS_SCHEMA_VERSION,
        "status": report.status,
        "exit_code": report.exit_code,
        "problems": list(report.problems),
        "checked_at": report.now,
        "agent": None, "dockerd": None, "payload": None, "platform": None,
        "files": [], "exec": None, "metrics_url": None, "cpuinfo": None, "host_docker": None,
    }
    if s is None:
        return doc
    now, d, p = report.now, s.dockerd, s.payload
    doc["agent"] = {"pid": s.pid, "version": s.version, "state": s.state, "config_path": s.config_path,
                    "uptime_seconds": _since(now, s.started_at), "last_step_age_seconds": _since(now, s.last_step_at),
                    "steps": s.steps}
    doc["dockerd"] = {"state": d.state, "reason": d.reason, "pid": d.pid, "adopted": d.adopted,
                      "uptime_seconds": _since(now, d.started_at), "ping_ok": d.ping_ok,
                      "restarts_total": sum(d.restarts.values()), "restarts": dict(d.restarts),
                      "last_restart_reason": d.last_restart_reason, "last_restart_at": d.last_restart_at,
                      "server_version": d.server_version}
    doc["payload"] = {"root": p.root, "state": p.state, "problem": p.problem, "version": p.version, "arch": p.arch}
    doc["platform"] = {"os": d.platform_os, "arch": d.platform_arch, "variant": d.platform_variant}
    doc["files"] = [{"name": f.name, "path": f.path, "ok": f.ok, "problem": f.problem,
                     "repairs_total": sum(f.repairs.values()), "last_repair_reason": f.last_repair_reason,
                     "last_repair_at": f.last_repair_at} for f in s.files]
    doc["exec"] = {"mode": s.exec_mode, "detail": s.exec_detail}
    doc["cpuinfo"] = {"profile": s.cpuinfo.profile, "variant": s.cpuinfo.variant,
                      "features": list(s.cpuinfo.features), "hidden_features": list(s.cpuinfo.hidden_features)}
    h = s.host_docker
    doc["host_docker"] = {"enabled": h.enabled, "unit": h.unit, "wired": h.wired, "pid": h.pid, "problem": h.problem}
    doc["metrics_url"] = s.metrics_url or None
    return doc


def status_command(config: AgentConfig, as_json: bool, out: TextIO, proc_root: str = "/proc") -> int:
    report = read_status(config, time.time(), proc_root)
    if as_json:
        out.write(json.dumps(render_json(report), indent=1, sort_keys=True) + "\n")
    else:
        out.write(render_human(report))
    return report.exit_code
