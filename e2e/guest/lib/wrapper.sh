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

probe agent.wrapper-path check_wrapper_in_path
probe agent.wrapper-engine-api check_api_container
probe agent.wrapper-payload-client check_payload_client_container
probe agent.wrapper-classic-step check_build_step 0
probe agent.wrapper-buildkit-step check_build_step 1
probe agent.wrapper-arm64 check_arm64_container
