#!/bin/sh
# Runs inside the arm64 guest (started by e2e-probes.service from the read-only data disk at /e2e).
# Prints one line per probe on the serial console, for the host to parse:
#   E2E PASS <name> <detail> <seconds>s        E2E FAIL <name> <detail> <seconds>s
#   E2E INFO <key> <value>                      E2E DONE <passed> <failed>
# Every probe prints its line even when an earlier one failed (a failed dockerd start makes the
# docker probes fail fast, not vanish); only a crash or the host's timeout loses lines, and then
# E2E DONE is missing. /e2e/mode says which set runs: platform | agent | no-aarch32.
set -u
E2E=/e2e
WORK=/run/e2e
mkdir -p "$WORK"
mode=$(cat "$E2E/mode")
passed=0
failed=0

now() { date +%s%N; }

# probe NAME FUNCTION [ARGS...]: FUNCTION sets $detail and returns 0 for PASS.
probe() {
    name=$1; shift
    detail=""
    start=$(now)
    if "$@" > "$WORK/$name.out" 2>&1; then verdict=PASS; passed=$((passed + 1)); else verdict=FAIL; failed=$((failed + 1)); fi
    elapsed=$(( ($(now) - start) / 1000000 ))
    [ -n "$detail" ] || detail=$(tail -n 3 "$WORK/$name.out" | tr '\n\t' '  ' | cut -c1-200)
    # The console log is all the host keeps of a run: a failure brings its evidence along.
    [ $verdict = PASS ] || tail -n 40 "$WORK/$name.out" | sed "s/^/e2e| $name: /"
    printf 'E2E %s %s %s %d.%03ds\n' "$verdict" "$name" "${detail:--}" $((elapsed / 1000)) $((elapsed % 1000))
}

# Waits are bounded in seconds, not tries: one `armhf-agent status` costs seconds under TCG.
# within SECONDS: starts a bound; `expired` is then true once it has passed.
within() { bound=$(( $(date +%s) + $1 )); }
expired() { [ "$(date +%s)" -gt "$bound" ]; }

# To the console (fd 3) even from inside a probe, whose output goes to its .out file.
exec 3>&1
info() { printf 'E2E INFO %s %s\n' "$1" "$2" >&3; }

# expect WHAT EXPECTED ACTUAL: sets detail, succeeds when equal.
expect() {
    detail="$1=$3"
    [ "$3" = "$2" ] || { detail="$detail (expected $2)"; return 1; }
}

cpu_count=$(grep -c '^processor' /proc/cpuinfo)
# The host checks that the guest is the row's release (a cached disk of another release would pass as it).
info release "$(. /etc/os-release && echo "$VERSION_CODENAME")"
info kernel "$(uname -r)"
info cpu-part "$(sed -n 's/^CPU part[[:space:]]*: //p' /proc/cpuinfo | sort -u | tr '\n' ' ')"
info cpus "$cpu_count"

. "$E2E/lib/$mode.sh"

printf 'E2E DONE %d %d\n' "$passed" "$failed"
