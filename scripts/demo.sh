#!/bin/bash
# Runs the agent for real: a demo config under /var/lib/armhf-agent-demo, the system's Docker
# binaries standing in for the armhf payload on non-Arm hosts, agent in the foreground (Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/armhf-agent demo "$@"
