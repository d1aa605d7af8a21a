"""`armhf-agent demo`: the agent for real, on a throwaway layout under one folder.

On a non-Arm development machine the system's own Docker binaries (Debian's docker.io) stand in for
the armhf payload; `setarch linux32` semantics still apply (containers print i686 where an arm64
host prints armv8l). Nothing outside DIR is touched: socket, data-root, shim and cpuinfo all live in it.
"""

from __future__ import annotations

import os
import shutil
import textwrap

from . import payload as payloads
from .aarch32 import is_arm64
from .config import load_config

SYSTEM_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")

DEMO_CONFIG = """\
# armhf-agent demo config: everything under {dir}
[agent]
state_dir = "{dir}/state"
run_dir = "{dir}/run"

[docker]
root = "{dir}/payload"
host = "unix://{dir}/docker.sock"
data_root = "{dir}/data"
exec_root = "{dir}/exec"
pidfile = "{dir}/docker.pid"
# No bridge, no iptables: the demo never touches the host's network.
args = ["--bridge=none", "--iptables=false"]
log_file = "{dir}/dockerd.log"

[cpuinfo]
path = "{dir}/hijacked-armhf-cpuinfo"

[shim]
path = "{dir}/bin/docker"

[metrics]
listen = "127.0.0.1:9742"
"""


def _system_binary(name: str) -> str | None:
    for d in SYSTEM_DIRS:
        p = os.path.join(d, name)
        if os.path.isfile(p):
            return os.path.realpath(p)
    return None


def lay_out(base: str) -> str:
    os.makedirs(base, mode=0o755, exist_ok=True)
    os.chmod(base, 0o755)
    for sub in ("bin", "state", "run"):
        os.makedirs(os.path.join(base, sub), mode=0o755, exist_ok=True)
    payload = os.path.join(base, "payload")
    if not payloads.find(payload).get("dockerd") and not is_arm64():
        os.makedirs(payload, mode=0o755, exist_ok=True)
        for name in payloads.REQUIRED:
            src = _system_binary(name)
            if src and not os.path.lexists(os.path.join(payload, name)):
                os.symlink(src, os.path.join(payload, name))
    config = os.path.join(base, "agent.toml")
    with open(config, "w") as f:
        f.write(DEMO_CONFIG.format(dir=base))
    return config


def run_demo(base: str) -> int:
    from .loop import Agent
    from .metrics_wiring import start_metrics

    base = os.path.abspath(base)
    config_path = lay_out(base)
    loaded = load_config(config_path)
    c = loaded.config
    image_hint = ""
    if shutil.which("busybox"):
        image_hint = (f"    mkdir -p /tmp/bb/bin && cp $(command -v busybox) /tmp/bb/bin/ && "
                      f"for a in sh cat uname; do ln -sf busybox /tmp/bb/bin/$a; done\n"
                      f"    tar -C /tmp/bb -c . | {c.shim.path} -H {c.docker.host} import - bb:local\n")
    print(textwrap.dedent(f"""\
        armhf-agent demo in {base}
          config:   {config_path}   (armhf-agent --config {config_path} status | doctor | render-shim)
          socket:   {c.docker.host}
          shim:     {c.shim.path}   (injects --mount ...{c.cpuinfo.path} onto /proc/cpuinfo into `docker run`)
          metrics:  http://{c.metrics.listen}/metrics
        In another terminal, once "ready" is logged:
        """) + image_hint + textwrap.dedent(f"""\
            {c.shim.path} -H {c.docker.host} run --rm --network none bb:local sh -c 'uname -m; head -4 /proc/cpuinfo'
        Ctrl-C stops the agent and its dockerd.
        """), flush=True)
    return Agent(loaded, metrics_factory=start_metrics).run()
