# Mode "no-aarch32": the guest CPU (QEMU's a64fx) has no AArch32 at EL0, like a Graviton4. An armhf
# binary must fail to exec with ENOEXEC and personality(PER_LINUX32) must fail with EINVAL
# (reference/platform.md), with no qemu-arm binfmt handler around to hide the first.

unpack_init() {
    tar -C "$WORK" -xzf "$E2E"/docker-*.tgz docker/docker-init || return 1
    detail=docker/docker-init
}

check_no_aarch32() {
    expect aarch32 "binfmt-arm=none,exec=ENOEXEC,personality=EINVAL" \
        "$(python3 "$E2E/aarch32.py" "$WORK/docker/docker-init" | tr '\n' ',' | sed 's/,$//')"
}

probe payload-unpack unpack_init
probe aarch32-absent check_no_aarch32

if [ -f "$E2E/armhf-agent.deb" ]; then
    . "$E2E/lib/agent-lib.sh"
    probe agent.deb-install install_deb
    probe agent.config configure_agent
    probe agent.install-docker install_docker
    probe agent.doctor-unsupported check_doctor_unsupported
    probe agent.unsupported-reported check_unsupported_reported
fi
