"""Where the shim records go and what the installed shim must contain (the script itself: agent.shim)."""

from __future__ import annotations

import os

from .config import AgentConfig

# Present in every shim we render (its header line): tells "our shim, edited" from "a foreign file".
SHIM_MARKER = b"installed by armhf-agent"
RECORDS_FILE = "shim-records"


def records_path(config: AgentConfig) -> str:
    return os.path.join(config.agent.run_dir, RECORDS_FILE)


def shim_content(client: str, cpuinfo_path: str, records: str, daemon_host: str, version: str) -> bytes:
    """daemon_host: the agent's `docker.host`; the shim inserts its mount only for that daemon."""
    from .shim import render_shim  # the shim capability (agent/shim.py)

    return render_shim(client, cpuinfo_path, records, daemon_host, version).encode()
