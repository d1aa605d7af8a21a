# Issue 17 on the emulated arm64 host (rows whose data disk has multiplatform/): the host's own arm64
# docker.service (the release's docker.io and docker-buildx, containerd image store) beside the agent's
# armhf dockerd, and one `docker buildx build --platform linux/arm64,linux/arm/v7,linux/arm/v6 --push`
# to a registry on loopback (Debian's docker-registry), first without host_docker mode, then with it.
# Sourced by agent.sh after the agent probes; the units were masked in the image (customize.sh).

HOST_DOCKER="timeout $STEP_TIMEOUT /usr/bin/docker -H unix:///var/run/docker.sock"
AGENT_SOCK=/run/armhf-docker.sock
REGISTRY=127.0.0.1:5000
MP_PLATFORMS=linux/arm64,linux/arm/v7,linux/arm/v6
MP_IMAGE=$REGISTRY/e2e-mp
# One line per build step: uname -m | CPU architecture | model name | getconf LONG_BIT.
MP_RECORD='printf "%s|%s|%s|%s\n" "$(uname -m)" "$(sed -n "s/^CPU architecture[[:space:]]*: //p" /proc/cpuinfo | head -n 1)" "$(sed -n "s/^model name[[:space:]]*: //p" /proc/cpuinfo | head -n 1)" "$(getconf LONG_BIT)"'

registry_up() { python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' "http://$REGISTRY/v2/" 2>/dev/null; }

# The host's containerd first: the agent's dockerd, restarted on paths of its own next, must then still
# start the payload's containerd rather than join this one (its socket is there).
start_host_containerd() {
    systemctl unmask containerd.service docker.socket docker.service docker-registry.service
    systemctl start containerd.service || return 1
    within 120
    until [ -S /run/containerd/containerd.sock ]; do
        expired && { systemctl status containerd.service --no-pager; return 1; }
        sleep 1
    done
    expect "containerd.service" active "$(systemctl is-active containerd.service)"
}

# docker.service only once the agent's dockerd left its paths (/var/lib/docker, /run/docker.pid, the
# socket, /etc/docker/daemon.json): two dockerds on one data-root is what check-config refuses.
start_host_docker() {
    mkdir -p /etc/docker
    # The containerd image store keeps the three platforms of one image in the daemon (Docker 26: a feature).
    printf '{"bridge": "none", "iptables": false, "ip6tables": false, "features": {"containerd-snapshotter": true}}\n' \
        > /etc/docker/daemon.json
    # Debian's registry config asks for htpasswd logins; this one is anonymous, on loopback only.
    printf 'version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/docker-registry\nhttp:\n  addr: %s\n' \
        "$REGISTRY" > /etc/docker/registry/config.yml
    systemctl start docker.service docker-registry.service || { journalctl -u docker.service --no-pager | tail -n 20; return 1; }
    within 180
    until $HOST_DOCKER version > /dev/null 2>&1 && registry_up; do
        expired && { systemctl status docker.service docker-registry.service --no-pager; return 1; }
        sleep 2
    done
    expect "docker.service server,storage driver,registry" "$($HOST_DOCKER version -f '{{.Server.Version}}'),overlayfs,up" \
        "$($HOST_DOCKER version -f '{{.Server.Version}}'),$($HOST_DOCKER info -f '{{.Driver}}'),up"
}

# The agent's daemon apart from docker.service's paths (check-config insists), restarted now that the
# host's containerd runs: it must still run the payload's containerd, not join the host's.
apart_agent() {
    sed -i "s|^host = .*|host = \"unix://$AGENT_SOCK\"|; s|^data_root = .*|data_root = \"/var/lib/armhf-docker\"|;
s|^exec_root = .*|exec_root = \"/run/armhf-docker\"|; s|^pidfile = .*|pidfile = \"/run/armhf-docker.pid\"|;
s|^config_file = .*|config_file = \"/etc/armhf-agent/daemon.json\"|" "$CONFIG"
    echo '{}' > /etc/armhf-agent/daemon.json
    armhf-agent check-config || return 1
    before=$(status_json | jget dockerd.pid)
    systemctl reload armhf-agent || return 1
    wait_healthy 240 "$before" || { detail="not healthy on its own paths within 240 s"; return 1; }
    own=no
    for kid in $(cat /proc/"$dockerd_pid"/task/*/children); do
        [ "$(cat "/proc/$kid/comm" 2>/dev/null)" = containerd ] && own=yes
    done
    expect "agent's socket answers,own containerd" "yes,yes" \
        "$(timeout 60 /opt/docker/docker -H "unix://$AGENT_SOCK" version > /dev/null 2>&1 && echo yes || echo no),$own"
}

mp_context() {
    ctx=$WORK/mp-ctx
    [ -f "$ctx/Dockerfile" ] && return 0
    mkdir -p "$ctx" && cp "$E2E"/multiplatform/rootfs-*.tar "$ctx/" || return 1
    printf 'FROM scratch\nARG TARGETARCH\nARG TARGETVARIANT\nADD rootfs-${TARGETARCH}${TARGETVARIANT}.tar /\nRUN %s > /record\n' \
        "$MP_RECORD" > "$ctx/Dockerfile"
}

# mp_build TAG: the three-platform build, pushed; its wall time as INFO (BuildKit 0.13's plain progress
# does not label a step with its platform: each half's own time is check_halves').
mp_build() {
    mp_context || return 1
    t0=$(date +%s%N)
    # --network none: the guest's dockerds have no bridge (BuildKit's RUN default is the bridge).
    $HOST_DOCKER buildx build --progress=plain --no-cache --provenance=false --network none --platform "$MP_PLATFORMS" \
        -t "$MP_IMAGE:$1" --push "$WORK/mp-ctx" > "$WORK/mp-build-$1.log" 2>&1 || { tail -n 30 "$WORK/mp-build-$1.log"; return 1; }
    info "mp-build-$1-seconds" "$(( ($(date +%s%N) - t0) / 1000000000 ))"
    python3 "$E2E/registry.py" "http://$REGISTRY" e2e-mp "$1" /record > "$WORK/mp-$1.txt" || return 1
    cat "$WORK/mp-$1.txt"
}

# check_halves: each platform built alone (--no-cache, into the daemon's image store), its wall time as
# INFO: the figure of each half that the three-platform build's log cannot give. Each image's record is
# then read back from the image itself, so a half that built the wrong view fails here too.
check_halves() {
    mp_context || return 1
    got=""
    for p in linux/arm64 linux/arm/v7 linux/arm/v6; do
        tag=$MP_IMAGE:half-$(printf '%s' "${p#linux/}" | tr / -)
        t0=$(date +%s%N)
        $HOST_DOCKER buildx build --progress=plain --no-cache --provenance=false --network none --platform "$p" \
            -t "$tag" "$WORK/mp-ctx" > "$WORK/mp-half.log" 2>&1 || { tail -n 30 "$WORK/mp-half.log"; detail="$p alone failed"; return 1; }
        info "mp-build-$(printf '%s' "${p#linux/}" | tr / -)-alone-seconds" "$(( ($(date +%s%N) - t0) / 1000000000 ))"
        got="$got${got:+; }$(summary "$($HOST_DOCKER run --rm --network none --platform "$p" "$tag" cat /record)")"
    done
    expect "alone: arm64; arm/v7; arm/v6 (uname arch model bits)" "$1" "$got"
}

# record PLATFORM TAG: the build step's line for that platform, read back from the registry.
record() { awk -F '\t' -v p="$1" '$1 == p { print $2 }' "$WORK/mp-$2.txt"; }
# field N LINE
field() { printf '%s' "$2" | cut -d '|' -f "$1"; }
# The model name's last word: "(v7l)", "(v6l)", or nothing (an arm64 kernel's cpuinfo has no model name).
model() { m=$(field 3 "$1"); [ -n "$m" ] && printf '%s' "${m##* }"; }
summary() { printf '%s %s %s %s' "$(field 1 "$1")" "$(field 2 "$1")" "$(model "$1")" "$(field 4 "$1")"; }

# check_build TAG EXPECTED: the three-platform build, then what each platform's step recorded.
check_build() {
    mp_build "$1" || { detail="build failed"; return 1; }
    expect "platforms; arm64; arm/v7; arm/v6 (uname arch model bits)" "$2" \
        "$(wc -l < "$WORK/mp-$1.txt" | tr -d ' '); $(summary "$(record linux/arm64 "$1")"); $(summary "$(record linux/arm/v7 "$1")"); $(summary "$(record linux/arm/v6 "$1")")"
}

# start_median PLATFORM: median wall time (ms) of five `docker run --rm true` on the host daemon.
start_median() {
    for i in 1 2 3 4 5; do
        t0=$(date +%s%N)
        $HOST_DOCKER run --rm --network none --platform "$1" "$MP_IMAGE:off" true > /dev/null 2>&1 || return 1
        echo $(( ($(date +%s%N) - t0) / 1000000 ))
    done | sort -n | sed -n 3p
}

host_docker_on() {
    systemctl cat docker.service > "$WORK/docker.service.before"
    off_ms=$(start_median linux/arm/v7) || return 1
    info mp-start-v7-unwired-ms "$off_ms"
    armhf-agent host-docker on > "$WORK/on.txt" 2>&1 || { cat "$WORK/on.txt"; return 1; }
    cat "$WORK/on.txt"
    within 240
    until [ "$(status_json | jget host_docker.wired)" = true ] && $HOST_DOCKER version > /dev/null 2>&1; do
        expired && { armhf-agent host-docker status; return 1; }
        sleep 2
    done
    on_ms=$(start_median linux/arm/v7) || return 1
    info mp-start-v7-wired-ms "$on_ms"
    scrape "$(status_json | jget metrics_url)" > "$WORK/mp-metrics.txt"
    expect "announced,wired metric" "yes,1" \
        "$(grep -q 'it will be restarted' "$WORK/on.txt" && echo yes || echo no),$(metric armhf_agent_host_docker_wired < "$WORK/mp-metrics.txt")"
}

check_host_runs() {
    v7=$($HOST_DOCKER run --rm --network none --platform linux/arm/v7 "$MP_IMAGE:on" sh -c "$MP_RECORD")
    a64=$($HOST_DOCKER run --rm --network none --platform linux/arm64 "$MP_IMAGE:on" sh -c "$MP_RECORD")
    $HOST_DOCKER rm -f mp-v7 > /dev/null 2>&1
    $HOST_DOCKER run -d --name mp-v7 --network none --platform linux/arm/v7 "$MP_IMAGE:on" sleep 600 > /dev/null || return 1
    exec_uname=$($HOST_DOCKER exec mp-v7 uname -m)
    $HOST_DOCKER rm -f mp-v7 > /dev/null
    expect "run arm/v7; run arm64; exec arm/v7" "armv8l 7 (v7l) 32; aarch64 8  64; armv8l" \
        "$(summary "$v7"); $(summary "$a64"); $exec_uname"
}

host_docker_off() {
    armhf-agent host-docker off > "$WORK/off.txt" 2>&1 || { cat "$WORK/off.txt"; return 1; }
    cat "$WORK/off.txt"
    within 240
    until [ "$(systemctl is-active docker.service)" = active ] && $HOST_DOCKER version > /dev/null 2>&1; do
        expired && return 1
        sleep 2
    done
    systemctl cat docker.service > "$WORK/docker.service.after"
    expect "announced,drop-in,unit restored,run arm/v7" "yes,gone,yes,aarch64" \
        "$(grep -q 'it will be restarted' "$WORK/off.txt" && echo yes || echo no),$([ -e /etc/systemd/system/docker.service.d/50-armhf-agent.conf ] && echo present || echo gone),$(cmp -s "$WORK/docker.service.before" "$WORK/docker.service.after" && echo yes || echo no),$($HOST_DOCKER run --rm --network none --platform linux/arm/v7 "$MP_IMAGE:on" uname -m)"
}

probe mp.host-containerd-start start_host_containerd
probe mp.agent-apart apart_agent
probe mp.host-docker-start start_host_docker
# Without the mode the 32-bit halves see the arm64 view; with it, each its own.
probe mp.build-unwired check_build off "3; aarch64 8  64; aarch64 8  32; aarch64 8  32"
probe mp.host-docker-on host_docker_on
probe mp.build-wired check_build on "3; aarch64 8  64; armv8l 7 (v7l) 32; armv8l 7 (v6l) 32"
probe mp.build-halves check_halves "aarch64 8  64; armv8l 7 (v7l) 32; armv8l 7 (v6l) 32"
probe mp.host-runs check_host_runs
probe mp.host-docker-off host_docker_off
