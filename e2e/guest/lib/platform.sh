# Mode "platform": no agent. Proves the harness and the platform facts the agent is built on
# (reference/platform.md) by doing by hand what the agent automates: unpack the payload, start the
# armhf dockerd under linux32 in a private mount namespace with a fake cpuinfo, bind the fake into
# containers. Then the same dockerd without the fake (cpuinfo.daemon = false), and without the
# personality, to show what each piece changes.

. "$E2E/lib/docker.sh"

SOCK=/run/e2e-docker.sock
PIDFILE=/run/e2e-docker.pid
FAKE_CPUINFO=$WORK/cpuinfo
DOCKER="timeout $STEP_TIMEOUT /opt/docker/docker -H unix://$SOCK"
CPUINFO_MOUNT="--mount type=bind,source=$FAKE_CPUINFO,target=/proc/cpuinfo,readonly"
# dockerd finds containerd, runc, docker-init and the shim on PATH, as in Docker's static release.
PATH=/opt/docker:$PATH
export PATH

unpack_payload() {
    tar -C /opt -xzf "$E2E"/docker-*.tgz || return 1
    detail=$(ls /opt/docker | tr '\n' ',')
    [ -x /opt/docker/dockerd ]
}

check_aarch32() {
    expect aarch32 "binfmt-arm=none,exec=ok,personality=ok" \
        "$(python3 "$E2E/aarch32.py" /opt/docker/docker-init | tr '\n' ',' | sed 's/,$//')"
}

check_personality_uname() {
    expect "linux32 uname -m" armv8l "$(setarch linux32 uname -m)"
}

# The arm64 kernel shows a PER_LINUX32 reader the compat layout, which still says architecture 8;
# the fake is that view with the one line an ARMv7 board would differ in (reference/platform.md).
make_fake_cpuinfo() {
    setarch linux32 cat /proc/cpuinfo > "$WORK/cpuinfo.compat" || return 1
    sed 's/^CPU architecture[[:space:]]*:.*/CPU architecture: 7/' "$WORK/cpuinfo.compat" > "$FAKE_CPUINFO"
    expect compat-view "arch=8 model=v8l" \
        "arch=$(sed -n 's/^CPU architecture[[:space:]]*: //p' "$WORK/cpuinfo.compat" | head -n 1) model=$(sed -n 's/^model name.*(\(.*\))$/\1/p' "$WORK/cpuinfo.compat" | head -n 1)"
}

# start_dockerd PERSONALITY(linux32|none) CPUINFO(fake|real)
start_dockerd() {
    # One line: it is also spliced into the `sh -c` string below.
    dockerd="/opt/docker/dockerd --data-root /var/lib/e2e-docker --exec-root /run/e2e-docker -H unix://$SOCK --pidfile $PIDFILE --bridge=none --iptables=false"
    wrapper=""
    [ "$1" = linux32 ] && wrapper="setarch linux32"
    if [ "$2" = fake ]; then
        # The reference recipe: only dockerd's namespace sees the fake, the host's /proc stays real.
        # Neither setarch, unshare (without --fork) nor `sh -c "... && exec"` forks: $! ends up dockerd.
        $wrapper unshare -m --propagation slave sh -c \
            "mount --bind -o ro $FAKE_CPUINFO /proc/cpuinfo && exec $dockerd" >> "$WORK/dockerd.log" 2>&1 &
    else
        # shellcheck disable=SC2086
        $wrapper $dockerd >> "$WORK/dockerd.log" 2>&1 &
    fi
    dockerd_pid=$!
    within 120
    until $DOCKER version > /dev/null 2>&1; do
        kill -0 "$dockerd_pid" 2>/dev/null || { detail="dockerd exited"; tail -n 20 "$WORK/dockerd.log"; return 1; }
        expired && { detail="no answer on $SOCK within 120 s"; tail -n 20 "$WORK/dockerd.log"; return 1; }
        sleep 1
    done
    detail="personality=$1 cpuinfo=$2 pid=$(cat $PIDFILE)"
}

stop_dockerd() {
    [ -f "$PIDFILE" ] || return 0
    pid=$(cat "$PIDFILE")
    kill "$pid" 2>/dev/null
    within 60
    while kill -0 "$pid" 2>/dev/null; do
        expired && { detail="dockerd $pid still running after 60 s"; return 1; }
        sleep 1
    done
    detail="stopped $pid"
}

check_daemon_cpuinfo() {
    expect "dockerd's cpuinfo arch" 7 \
        "$(nsenter -t "$(cat $PIDFILE)" -m sed -n 's/^CPU architecture[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
}

check_host_cpuinfo_untouched() {
    expect "host mounts over cpuinfo" 0 "$(grep -c ' /proc/cpuinfo ' /proc/self/mountinfo)"
}

probe payload-unpack unpack_payload
probe aarch32-el0 check_aarch32
probe linux32-uname check_personality_uname
probe compat-cpuinfo make_fake_cpuinfo

# cpuinfo.daemon = true: what the agent does by default.
probe v7.dockerd-start start_dockerd linux32 fake
probe v7.dockerd-cpuinfo check_daemon_cpuinfo
probe v7.host-cpuinfo check_host_cpuinfo_untouched
probe v7.server-platform check_server_platform
probe v7.info-architecture check_info_architecture
probe v7.import check_import v7
probe v7.uname check_uname armv8l
probe v7.config-guess check_config_guess armv8l-unknown-linux-gnueabihf
probe v7.long-bit check_long_bit
probe v7.dpkg-arch check_dpkg_architecture
probe v7.cpuinfo-mounted check_container_cpuinfo "arch=7 processors=$cpu_count" $CPUINFO_MOUNT
probe v7.cpuinfo-unmounted check_container_cpuinfo "arch=8 processors=$cpu_count"
probe v7.scratch-classic check_built_variant 0 e2e-scratch-classic scratch v7
# The classic builder copies the base image's platform: FROM an image imported by 20.10 (no variant)
# the result has no variant either, whatever the daemon reads (BuildKit too, see check_buildkit_target).
probe v7.debian-classic check_built_variant 0 e2e-debian-classic "$IMAGE" base
probe v7.scratch-buildkit check_built_variant 1 e2e-scratch-buildkit scratch v7
probe v7.buildkit-target check_buildkit_target e2e-debian-buildkit v7
probe v7.dockerd-stop stop_dockerd

# cpuinfo.daemon = false: the personality alone; the daemon reads the kernel's "8".
probe v8.dockerd-start start_dockerd linux32 real
probe v8.scratch-classic check_built_variant 0 e2e-scratch-classic-v8 scratch v8
probe v8.buildkit-target check_buildkit_target e2e-debian-buildkit-v8 v8
probe v8.dockerd-stop stop_dockerd

# No personality: what the seed's Graviton dockerd gave autoconf.
probe plain.dockerd-start start_dockerd none real
probe plain.uname check_uname aarch64
probe plain.config-guess check_config_guess aarch64-unknown-linux-gnu
probe plain.dockerd-stop stop_dockerd
