# Probe functions about the armhf Docker engine, sourced by the mode scripts. They talk to dockerd
# through $DOCKER (a command line) and give containers $CPUINFO_MOUNT (empty when the agent's docker
# shim adds the mount itself). Each sets $detail and returns 0 for PASS.

IMAGE=debian-armhf:local
# Longer than any single step took in the feasibility run (~6 s dockerd start, ~3 s per docker run,
# under TCG), short enough that a hung step still leaves time for the others before the host's limit.
STEP_TIMEOUT=300

run_in() {
    # shellcheck disable=SC2086 # $DOCKER and $CPUINFO_MOUNT are word lists on purpose
    $DOCKER run --rm --network none $CPUINFO_MOUNT "$@"
}

check_server_platform() {
    expect server linux/arm "$($DOCKER version -f '{{.Server.Os}}/{{.Server.Arch}}')"
}

check_info_architecture() {
    expect architecture armv8l "$($DOCKER info -f '{{.Architecture}}')"
}

engine_major() { $DOCKER version -f '{{.Server.Version}}' | cut -d. -f1; }

# `docker import` stamps the daemon's own platform from Docker 23 on (moby#43103 gave import a
# platform, the daemon's by default): linux/arm/v7 under the agent, measured on 26.1.5. Docker 20.10
# stamps linux/arm with no variant whatever the daemon reads (reference/platform.md).
check_import() {  # DAEMON_VARIANT
    $DOCKER image inspect "$IMAGE" > /dev/null 2>&1 || $DOCKER import "$E2E/debian-armhf.tar" "$IMAGE" || return 1
    want=""
    [ "$(engine_major)" -ge 23 ] && want=$1
    expect "platform(docker $(engine_major))" "linux/arm/$want" "$($DOCKER image inspect -f '{{.Os}}/{{.Architecture}}/{{.Variant}}' "$IMAGE")"
}

# The variant an image built FROM BASE inherits: BASE's own (none for scratch).
base_variant() { [ "$1" = scratch ] || $DOCKER image inspect -f '{{.Variant}}' "$1"; }

check_uname() {  # EXPECTED
    expect uname-m "$1" "$(run_in "$IMAGE" uname -m)"
}

check_config_guess() {  # EXPECTED
    expect config.guess "$1" "$(run_in "$IMAGE" /usr/share/misc/config.guess)"
}

check_long_bit() {
    expect LONG_BIT 32 "$(run_in "$IMAGE" getconf LONG_BIT)"
}

check_dpkg_architecture() {
    expect dpkg-arch armhf "$(run_in "$IMAGE" dpkg --print-architecture)"
}

# What a container reads as /proc/cpuinfo: EXPECTED is "arch=N processors=M".
check_container_cpuinfo() {  # EXPECTED [RUN OPTIONS...]
    want=$1; shift
    # shellcheck disable=SC2086
    got=$($DOCKER run --rm --network none "$@" "$IMAGE" sh -c \
        'printf "arch=%s processors=%s" "$(sed -n "s/^CPU architecture[[:space:]]*: //p" /proc/cpuinfo | head -n 1)" "$(grep -c ^processor /proc/cpuinfo)"')
    expect cpuinfo "$want" "$got"
}

# build_image BUILDKIT(0|1) TAG BASE: a one-file image FROM BASE; records what BuildKit passed as
# TARGETPLATFORM/TARGETVARIANT in /target when BASE can run a shell.
build_image() {
    ctx=$WORK/ctx-$2
    rm -rf "$ctx" && mkdir -p "$ctx" && echo "$2" > "$ctx/marker"
    if [ "$3" = scratch ]; then
        printf 'FROM scratch\nCOPY marker /marker\n' > "$ctx/Dockerfile"
    else
        printf 'FROM %s\nARG TARGETPLATFORM\nARG TARGETVARIANT\nCOPY marker /marker\nRUN echo "$TARGETPLATFORM $TARGETVARIANT" > /target\n' "$3" > "$ctx/Dockerfile"
    fi
    env DOCKER_BUILDKIT="$1" $DOCKER build --network none -t "$2" "$ctx"
}

# EXPECTED_VARIANT "base": the base image's own variant (see check_buildkit_target).
check_built_variant() {  # BUILDKIT TAG BASE EXPECTED_VARIANT
    want=$4
    [ "$want" = base ] && want=$(base_variant "$3")
    build_image "$1" "$2" "$3" || { detail="build failed"; return 1; }
    expect variant "$want" "$($DOCKER image inspect -f '{{.Variant}}' "$2")"
}

# BuildKit passes TARGET* from the daemon's own platform. Its image, like the classic builder's,
# inherits the base image's platform: FROM an image imported by Docker 20.10 (no variant) it has none,
# FROM one imported by Docker 26 (v7) it is v7, measured here; FROM scratch the daemon's variant
# reaches the image either way.
check_buildkit_target() {  # TAG EXPECTED_VARIANT
    build_image 1 "$1" "$IMAGE" || { detail="build failed"; return 1; }
    expect TARGETPLATFORM,TARGETVARIANT,image-variant "linux/arm/$2,$2,$(base_variant "$IMAGE")" \
        "$(run_in "$1" cat /target | tr ' ' ','),$($DOCKER image inspect -f '{{.Variant}}' "$1")"
}
