# Functions for probing the installed agent, sourced by agent.sh and no-aarch32.sh. Each sets
# $detail and returns 0 for PASS.

. "$E2E/lib/docker.sh"

DOCKER="timeout $STEP_TIMEOUT /usr/local/bin/docker"
CPUINFO_MOUNT=""    # the shim adds the hijacked cpuinfo to run/create itself
CONFIG=/etc/armhf-agent/agent.toml
CPUINFO=/hijacked-armhf-cpuinfo

jget() { python3 "$E2E/jget.py" "$@"; }
# metric NAME{LABELS} < scrape: its value as a number (the exposition format writes 1 as 1.0).
metric() { awk -v name="$1" '$1 == name { print $2 + 0 }'; }
scrape() { python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=30).read().decode())' "$1"; }
status_json() { armhf-agent status --json; }

# wait_healthy SECONDS [NOT_PID]: until `armhf-agent status` says healthy (with a dockerd other
# than NOT_PID); sets $dockerd_pid.
wait_healthy() {
    within "$1"
    while :; do
        if armhf-agent status > /dev/null 2>&1; then
            dockerd_pid=$(status_json | jget dockerd.pid)
            [ "$dockerd_pid" != "${2:-}" ] && return 0
        fi
        expired && { armhf-agent status; journalctl -u armhf-agent -n 30 --no-pager; return 1; }
        sleep 1
    done
}

install_deb() {
    dpkg -i "$E2E/armhf-agent.deb" || return 1
    detail=$(dpkg-query -W -f '${Package}=${Version}/${Architecture}' armhf-agent)
}

# No iptables and no network in the guest: dockerd without its bridge and NAT rules, set the way an
# operator would, in the package's conffile. --ip6tables=false too: Docker 27 and later add ip6tables
# rules by default (moby daemon/command/config_unix.go); 20.10 and 26 accept the flag (off by default).
DOCKERD_ARGS='"--bridge=none", "--iptables=false", "--ip6tables=false"'
configure_agent() {
    sed -i "s/^args = \[\]\$/args = [$DOCKERD_ARGS]/" "$CONFIG"
    grep -qF "args = [$DOCKERD_ARGS]" "$CONFIG" || { detail="no 'args = []' line in $CONFIG"; return 1; }
    armhf-agent check-config
}

# What dockerd warned about at its start (ip6tables, cgroups, storage), kept on the console for the
# record: not a probe, nothing here can fail.
dockerd_warnings() {
    journalctl -u armhf-agent --no-pager -o cat | grep -E 'level=(warning|error|fatal)' | head -n 40 | sed 's/^/e2e| dockerd: /'
}

install_docker() {
    armhf-agent install-docker "$E2E"/docker-*.tgz || return 1
    detail=$(ls /opt/docker | tr '\n' ',')
}

start_agent() {
    systemctl restart armhf-agent || return 1
    wait_healthy 180 || { detail="not healthy within 180 s"; return 1; }
    detail="healthy, dockerd pid $dockerd_pid"
}

# verdict NAME [found]: a doctor check's verdict, with the start of what it found ("found" of
# aarch32-el0 is "<mode>: <evidence>"; of kernel-compat "CONFIG_COMPAT=y (<where>)").
verdict() {
    printf '%s' "$(jget --check "$1" verdict < "$WORK/doctor.json")"
    [ -z "${2:-}" ] || printf ' %s' "$(jget --check "$1" found < "$WORK/doctor.json" | cut -c1-"$2")"
}

# On a real arm64 kernel: AArch32 native, CONFIG_COMPAT read from the kernel's own config in /boot,
# 4 KiB pages, and no compat_uts_machine (Debian's kernels do not have it).
check_doctor() {
    armhf-agent doctor --json > "$WORK/doctor.json"
    cat "$WORK/doctor.json"
    expect "doctor aarch32-el0,kernel-compat,page-size,uts-machine" \
        "PASS native:,PASS CONFIG_COMPAT=y (/boot/config-,PASS 4 KiB pages,PASS containers print \`uname -m\` armv8l" \
        "$(verdict aarch32-el0 7),$(verdict kernel-compat 30),$(verdict page-size 11),$(verdict uts-machine 34)"
}

check_status() {
    status_json > "$WORK/status.json"
    cat "$WORK/status.json"
    expect status,exec,platform "healthy,native,linux/arm/v7" \
        "$(jget status < "$WORK/status.json"),$(jget exec.mode < "$WORK/status.json"),$(jget platform.os < "$WORK/status.json")/$(jget platform.arch < "$WORK/status.json")/$(jget platform.variant < "$WORK/status.json")"
}

check_metrics() {
    url=$(status_json | jget metrics_url)
    scrape "$url" > "$WORK/metrics.txt" || { detail="cannot scrape '$url'"; return 1; }
    expect "dockerd_up,exec_mode{native}" "1,1" \
        "$(metric armhf_agent_dockerd_up < "$WORK/metrics.txt"),$(metric 'armhf_agent_exec_mode{mode="native"}' < "$WORK/metrics.txt")"
}

# features_of FILE: the Features line(s) of a cpuinfo file, one per distinct value.
features_of() { sed -n 's/^Features[[:space:]]*: //p' "$1" | sort -u; }

# set_profile NAME: the conffile's profile line set to NAME, checked by check-config (which runs the
# host check: a profile may only hide features) and applied with a reload; then waits until the
# hijacked file shows FEATURES (or, with "!FEATURES", no longer shows them).
set_profile() {  # NAME FEATURES
    sed -i "s/^profile = \".*\"\$/profile = \"$1\"/" "$CONFIG"
    grep -q "^profile = \"$1\"\$" "$CONFIG" || { detail="no 'profile = ...' line in $CONFIG"; return 1; }
    armhf-agent check-config || { detail="check-config refused profile $1"; return 1; }
    systemctl reload armhf-agent || return 1
    within 60
    while :; do
        case $2 in
            !*) [ "$(features_of "$CPUINFO")" != "${2#!}" ] && return 0 ;;
            *) [ "$(features_of "$CPUINFO")" = "$2" ] && return 0 ;;
        esac
        expired && { detail="$CPUINFO shows '$(features_of "$CPUINFO")' 60 s after switching to $1"; return 1; }
        sleep 1
    done
}

# A device profile switched in by a reload reaches containers (through the shim's bind mount): a
# container reads the profile's Features, not the host's, on every processor line. Switched back to
# host afterwards, so the later probes see the host's view.
check_cpuinfo_profile() {  # PROFILE EXPECTED_FEATURES
    set_profile "$1" "$2" || { why=$detail; set_profile host "!$2"; detail=$why; return 1; }
    got=$(run_in "$IMAGE" sh -c 'sed -n "s/^Features[[:space:]]*: //p" /proc/cpuinfo | sort -u')
    profile=$(status_json | jget cpuinfo.profile)
    set_profile host "!$2" || return 1
    expect "features,profile" "$2,$1" "$got,$profile"
}

check_cpuinfo_restored() {
    inode=$(stat -c %i "$CPUINFO") || return 1
    rm "$CPUINFO" || return 1
    removed=$(date +%s)
    within 60
    until grep -q '^CPU architecture: 7' "$CPUINFO" 2>/dev/null; do
        expired && { detail="$CPUINFO not back within 60 s"; return 1; }
        sleep 1
    done
    detail="back within $(( $(date +%s) - removed )) s, inode $inode -> $(stat -c %i "$CPUINFO")"
}

check_dockerd_sigkill() {
    before=$(status_json | jget dockerd.pid)
    kill -KILL "$before" || return 1
    wait_healthy 180 "$before" || { detail="no healthy dockerd after SIGKILL of $before within 180 s"; return 1; }
    detail="pid $before killed, pid $dockerd_pid healthy"
}

start_sleeper() {
    $DOCKER rm -f e2e-sleeper > /dev/null 2>&1
    $DOCKER run -d --name e2e-sleeper --network none "$IMAGE" sleep 100000 > /dev/null
}

# adopt_after ACTION...: a container keeps running and dockerd keeps its pid across ACTION.
adopt_after() {
    start_sleeper || { detail="cannot start a container"; return 1; }
    started=$($DOCKER inspect -f '{{.State.StartedAt}}' e2e-sleeper)
    before=$(status_json | jget dockerd.pid)
    agent_before=$(systemctl show -p MainPID --value armhf-agent)
    "$@" || return 1
    within 180
    until [ "$(systemctl show -p MainPID --value armhf-agent)" != "$agent_before" ] && armhf-agent status > /dev/null 2>&1; do
        expired && { detail="no new healthy agent within 180 s"; return 1; }
        sleep 1
    done
    expect "dockerd pid,adopted,container" "$before,true,running $started" \
        "$(status_json | jget dockerd.pid),$(status_json | jget dockerd.adopted),$($DOCKER inspect -f '{{.State.Status}} {{.State.StartedAt}}' e2e-sleeper)"
}

# --live-restore added to dockerd's arguments in the conffile: a reload restarts dockerd with it.
enable_live_restore() {
    sed -i 's/^args = \[\(.*\)\]$/args = [\1, "--live-restore"]/' "$CONFIG"
    grep -q '^args = \[.*, "--live-restore"\]$' "$CONFIG" || { detail="no 'args = [...]' line in $CONFIG"; return 1; }
    armhf-agent check-config || { detail="check-config refused --live-restore"; return 1; }
    before=$(status_json | jget dockerd.pid)
    systemctl reload armhf-agent || return 1
    wait_healthy 180 "$before" || { detail="no healthy dockerd with --live-restore within 180 s"; return 1; }
    expect "LiveRestoreEnabled" true "$($DOCKER info -f '{{.LiveRestoreEnabled}}')"
}

# With --live-restore a container outlives a SIGKILLed dockerd: the agent starts a new one of the same
# version, which takes the running container back (its process never stopped).
check_live_restore_sigkill() {
    start_sleeper || { detail="cannot start a container"; return 1; }
    container_pid=$($DOCKER inspect -f '{{.State.Pid}}' e2e-sleeper)
    started=$($DOCKER inspect -f '{{.State.StartedAt}}' e2e-sleeper)
    before=$(status_json | jget dockerd.pid)
    kill -KILL "$before" || return 1
    wait_healthy 180 "$before" || { detail="no healthy dockerd after SIGKILL of $before within 180 s"; return 1; }
    alive=no
    kill -0 "$container_pid" 2>/dev/null && alive=yes
    # The successor must reach it too, not only find it running: its rootfs is visible only in the
    # namespace every dockerd of the agent shares (agent/launch.py enter_namespace).
    reached=$($DOCKER exec e2e-sleeper uname -m 2>&1)
    expect "container,process alive,exec" "running $started,yes,armv8l" \
        "$($DOCKER inspect -f '{{.State.Status}} {{.State.StartedAt}}' e2e-sleeper),$alive,$reached"
}

# On a CPU without AArch32 the agent must say so plainly and stay up instead of crash-looping: give
# it time for a few restarts' worth of backoff, then read every place it reports to. "Plainly" in
# STATUS= and the log: the exec mode's name or the agent's sentence for it.
PLAIN_UNSUPPORTED='unsupported|cannot execute AArch32|cannot run armhf natively'
check_unsupported_reported() {
    systemctl restart armhf-agent
    sleep 60
    status_json > "$WORK/status.json"; status_rc=$?
    cat "$WORK/status.json"
    systemctl show -p StatusText --value armhf-agent > "$WORK/status-text.txt"
    cat "$WORK/status-text.txt"
    journalctl -u armhf-agent --no-pager -n 30 > "$WORK/journal.txt"
    cat "$WORK/journal.txt"
    scrape "$(jget metrics_url < "$WORK/status.json")" > "$WORK/metrics.txt"
    expect "active,restarts,status-rc,exec,STATUS,log,metric" "active,0,1,unsupported,yes,yes,1" \
        "$(systemctl is-active armhf-agent),$(systemctl show -p NRestarts --value armhf-agent),$status_rc,$(jget exec.mode < "$WORK/status.json"),$(grep -Eqi "$PLAIN_UNSUPPORTED" "$WORK/status-text.txt" && echo yes || echo no),$(grep -Eqi "$PLAIN_UNSUPPORTED" "$WORK/journal.txt" && echo yes || echo no),$(metric 'armhf_agent_exec_mode{mode="unsupported"}' < "$WORK/metrics.txt")"
}

check_doctor_unsupported() {
    armhf-agent doctor --json > "$WORK/doctor.json"; doctor_rc=$?
    cat "$WORK/doctor.json"
    # The kernel has CONFIG_COMPAT: the doctor blames the CPU, not the kernel.
    expect "doctor rc,aarch32-el0,kernel-compat" "1,FAIL unsupported:,PASS CONFIG_COMPAT=y (/boot/config-" \
        "$doctor_rc,$(verdict aarch32-el0 12),$(verdict kernel-compat 30)"
}
