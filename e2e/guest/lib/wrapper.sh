# Probes of the runtime wrapper (issue 14), sourced by agent.sh after the agent runs: every container and
# build step reads the hijacked cpuinfo whatever started it (never through the CLI shim here), and an
# arm64 container on the same armhf daemon keeps the kernel's view and its own personality.

PAYLOAD_DOCKER="timeout $STEP_TIMEOUT /opt/docker/docker"     # the payload's own client, not the shim
ARCH_LINE="sed -n 's/^CPU architecture[[:space:]]*: //p' /proc/cpuinfo | head -n 1"

check_wrapper_in_path() {
    pid=$(status_json | jget dockerd.pid)
    first=$(tr '\0' '\n' < "/proc/$pid/environ" | sed -n 's/^PATH=//p' | cut -d: -f1)
    buildkit=$(tr '\0' '\n' < "/proc/$pid/environ" | sed -n 's/^DOCKER_BUILDKIT_RUNC_COMMAND=//p')
    expect "PATH[0],DOCKER_BUILDKIT_RUNC_COMMAND" "/var/lib/armhf-agent/runtime,/var/lib/armhf-agent/runtime/runc" \
        "$first,$buildkit"
}

check_api_container() {
    expect "Engine-API container: CPU architecture" 7 \
        "$(timeout "$STEP_TIMEOUT" python3 "$E2E/api.py" /var/run/docker.sock "$IMAGE" sh -c "$ARCH_LINE")"
}

check_payload_client_container() {
    expect "payload client container: CPU architecture" 7 \
        "$($PAYLOAD_DOCKER run --rm --network none "$IMAGE" sh -c "$ARCH_LINE")"
}

check_build_step() {  # BUILDKIT(0|1)
    ctx=$WORK/ctx-step-$1
    rm -rf "$ctx" && mkdir -p "$ctx"
    printf 'FROM %s\nRUN %s > /arch-at-build\n' "$IMAGE" "$ARCH_LINE" > "$ctx/Dockerfile"
    env DOCKER_BUILDKIT="$1" $PAYLOAD_DOCKER build --network none -t "e2e-step-$1" "$ctx" || { detail="build failed"; return 1; }
    expect "RUN step (DOCKER_BUILDKIT=$1): CPU architecture" 7 \
        "$($PAYLOAD_DOCKER run --rm --network none "e2e-step-$1" cat /arch-at-build)"
}

# The guest's own busybox-static is arm64: an arm64 image on the armhf daemon. Without seccomp: Docker's
# default profile on a 32-bit ARM daemon lists only SCMP_ARCH_ARM (moby profiles/seccomp: the archMap has
# ARM as a sub-architecture of AARCH64, not the reverse), so an arm64 process dies of SIGSYS at its first
# system call (seen here on 20.10 and 26.1: audit arch=c00000b7, sig=31). docs/ARCHITECTURE.md.
check_arm64_container() {
    tree=$WORK/arm64-tree
    rm -rf "$tree" && mkdir -p "$tree/bin" && cp /bin/busybox "$tree/bin/" || return 1
    for applet in sh uname sed head cat; do ln -s busybox "$tree/bin/$applet"; done
    $PAYLOAD_DOCKER image inspect e2e-arm64:local > /dev/null 2>&1 || \
        tar -C "$tree" -c . | $PAYLOAD_DOCKER import - e2e-arm64:local > /dev/null || return 1
    expect "arm64 container: uname -m,CPU architecture" "aarch64,8" \
        "$($PAYLOAD_DOCKER run --rm --network none --security-opt seccomp=unconfined e2e-arm64:local sh -c "uname -m; $ARCH_LINE" | tr '\n' ',' | sed 's/,$//')"
}

# A docker:dind-style image made from the payload's binaries and the guest's armhf libraries, started
# --privileged through the Engine API (neither the shim nor the CLI): the nested dockerd reads the
# hijacked cpuinfo the wrapper gave its container, so what it builds says linux/arm/v7.
DIND_SOCK=$WORK/dind/docker.sock
NESTED="timeout $STEP_TIMEOUT /opt/docker/docker -H unix://$DIND_SOCK"

dind_image() {
    $PAYLOAD_DOCKER image inspect e2e-dind:local > /dev/null 2>&1 && return 0
    tree=$WORK/dind-tree
    rm -rf "$tree" && mkdir -p "$tree/opt/docker" "$tree/usr/lib" "$tree/run" "$tree/tmp" "$tree/var/lib/docker" "$tree/etc" || return 1
    # The daemon's own binaries only (the client stays outside, on the bound socket): a smaller import.
    # docker-proxy too: Docker 26 refuses to start without it on PATH ("userland-proxy is enabled, but
    # userland-proxy-path is not set"), seen here; 20.10 did not look.
    for bin in dockerd containerd containerd-shim-runc-v2 runc docker-init docker-proxy; do
        cp -a "/opt/docker/$bin" "$tree/opt/docker/" || return 1
    done
    cp -a /usr/lib/arm-linux-gnueabihf "$tree/usr/lib/" || return 1
    ln -s ../run "$tree/var/run"
    if [ -L /lib ]; then         # merged /usr: the loader's /lib/ld-linux-armhf.so.3 is under usr/lib
        ln -s usr/lib "$tree/lib" && cp -a /usr/lib/ld-linux-armhf.so.3 "$tree/usr/lib/"
    else
        mkdir -p "$tree/lib" && cp -a /lib/arm-linux-gnueabihf /lib/ld-linux-armhf.so.3 "$tree/lib/"
    fi || return 1
    tar -C "$tree" -c . | $PAYLOAD_DOCKER import - e2e-dind:local > /dev/null && rm -rf "$tree"
}

# What every process of the runtime path is doing: the evidence when a start does not return.
runtime_evidence() {
    ps -eo pid,ppid,stat,etimes,wchan:24,args | grep -E 'runc|shim|containerd|dockerd|setarch|runtime_exec' | grep -v grep
    for pid in $(pgrep -f 'runc|runtime_exec|setarch'); do
        echo "--- $pid $(tr '\0' ' ' < "/proc/$pid/cmdline" | cut -c1-200)"; cat "/proc/$pid/stack" 2>/dev/null | head -n 8
    done
    tail -n 5 /run/armhf-agent/runtime-records 2>/dev/null
    journalctl -u armhf-agent --no-pager -n 15 2>/dev/null
}

check_nested_dockerd() {
    dind_image || { detail="could not make the dind image"; return 1; }
    mkdir -p "$WORK/dind" && rm -f "$DIND_SOCK"
    # In the background: a start that does not return is looked at while it hangs, then given up.
    timeout 240 python3 "$E2E/api.py" /var/run/docker.sock --privileged --bind "$WORK/dind:/run/dind" \
        --env PATH=/opt/docker:/usr/bin:/bin --detach e2e-dind:local \
        /opt/docker/dockerd -H unix:///run/dind/docker.sock --storage-driver vfs --bridge none \
        --iptables=false --ip6tables=false > "$WORK/dind.cid" 2> "$WORK/dind.err" &
    api=$!
    within 90
    while kill -0 "$api" 2> /dev/null; do
        expired && { echo "the API's start has not returned in 90 s:"; runtime_evidence; break; }
        sleep 2
    done
    wait "$api" || { cat "$WORK/dind.err"; detail="the nested dockerd's container did not start"; return 1; }
    cid=$(cat "$WORK/dind.cid")
    within 120
    until $NESTED version > /dev/null 2>&1; do
        expired && { detail="the nested dockerd never answered"; $PAYLOAD_DOCKER logs "$cid" 2>&1 | tail -n 20
                     $PAYLOAD_DOCKER rm -f "$cid" > /dev/null; return 1; }
        sleep 2
    done
    # What the nested daemon itself reads, through its own mount namespace.
    pid=$($PAYLOAD_DOCKER inspect -f '{{.State.Pid}}' "$cid")
    seen=$(sed -n 's/^CPU architecture[[:space:]]*: //p' "/proc/$pid/root/proc/cpuinfo" | head -n 1)
    # The classic builder stamps FROM scratch with the daemon's own platform (containerd's DefaultSpec,
    # read from /proc/cpuinfo: v8 from an arm64 kernel's) only when the first step is a COPY: a
    # config-only first step (ARG, LABEL) commits with no variant at all (moby v26.1.5 image.NewChildImage:
    # BaseImgVariant is the parent's, empty for scratch). BuildKit's TARGETVARIANT is that DefaultSpec too.
    mkdir -p "$WORK/ctx-nested-classic" "$WORK/ctx-nested-buildkit"
    echo nested > "$WORK/ctx-nested-classic/marker" && echo nested > "$WORK/ctx-nested-buildkit/marker"
    printf 'FROM scratch\nCOPY marker /marker\n' > "$WORK/ctx-nested-classic/Dockerfile"
    printf 'FROM scratch\nARG TARGETVARIANT\nLABEL targetvariant=$TARGETVARIANT\nCOPY marker /marker\n' > "$WORK/ctx-nested-buildkit/Dockerfile"
    env DOCKER_BUILDKIT=0 $NESTED build -t nested-classic "$WORK/ctx-nested-classic" && \
        env DOCKER_BUILDKIT=1 $NESTED build -t nested-buildkit "$WORK/ctx-nested-buildkit"
    built=$?
    got="$seen,$($NESTED version -f '{{.Server.Arch}}'),$($NESTED image inspect -f '{{.Os}}/{{.Architecture}}/{{.Variant}}' nested-classic)"
    got="$got,$($NESTED image inspect -f '{{.Os}}/{{.Architecture}}/{{.Variant}} {{index .Config.Labels "targetvariant"}}' nested-buildkit)"
    $PAYLOAD_DOCKER rm -f "$cid" > /dev/null
    [ $built = 0 ] || { detail="a nested build failed"; return 1; }
    expect "nested dockerd: its CPU architecture,arch,classic FROM scratch,BuildKit FROM scratch TARGETVARIANT" \
        "7,arm,linux/arm/v7,linux/arm/v7 v7" "$got"
}

probe agent.wrapper-path check_wrapper_in_path
probe agent.wrapper-engine-api check_api_container
probe agent.wrapper-payload-client check_payload_client_container
probe agent.wrapper-classic-step check_build_step 0
probe agent.wrapper-buildkit-step check_build_step 1
probe agent.wrapper-arm64 check_arm64_container
probe agent.wrapper-nested-dockerd check_nested_dockerd
