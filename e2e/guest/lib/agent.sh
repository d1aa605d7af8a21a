# Mode "agent": the project's arm64 .deb on the emulated host, as an operator would use it: install
# the package, the payload with `armhf-agent install-docker`, let systemd run the agent; then the
# platform probes through the agent's docker shim, the operator's commands, and repairs.

. "$E2E/lib/agent-lib.sh"

probe agent.deb-install install_deb
probe agent.config configure_agent
probe agent.install-docker install_docker
probe agent.start start_agent
dockerd_warnings
info docker "$($DOCKER version -f '{{.Server.Version}} (API {{.Server.APIVersion}}, containerd {{range .Server.Components}}{{if eq .Name "containerd"}}{{.Version}}{{end}}{{end}})' 2>&1 | head -n 1)"
probe agent.doctor check_doctor
probe agent.status check_status
probe agent.metrics check_metrics
probe agent.server-platform check_server_platform
probe agent.info-architecture check_info_architecture
probe agent.import check_import v7
probe agent.uname check_uname armv8l
probe agent.config-guess check_config_guess armv8l-unknown-linux-gnueabihf
probe agent.long-bit check_long_bit
probe agent.dpkg-arch check_dpkg_architecture
probe agent.cpuinfo-shim check_container_cpuinfo "arch=7 processors=$cpu_count"
# Debian's armhf baseline on the guest's Neoverse N1: NEON, VFPv4, idiv, crypto hidden. It needs only
# vfpv3 of the host (vfpv3d16 follows from it), whatever the guest kernel and QEMU add.
probe agent.cpuinfo-profile check_cpuinfo_profile armv7 "half thumb fastmult vfp edsp vfpv3 vfpv3d16 tls"
probe agent.scratch-classic check_built_variant 0 e2e-scratch-classic scratch v7
probe agent.debian-classic check_built_variant 0 e2e-debian-classic "$IMAGE" base
probe agent.scratch-buildkit check_built_variant 1 e2e-scratch-buildkit scratch v7
probe agent.buildkit-target check_buildkit_target e2e-debian-buildkit v7
probe agent.cpuinfo-restored check_cpuinfo_restored
# Containers and build steps that never pass the CLI shim (issue 14).
. "$E2E/lib/wrapper.sh"
probe agent.dockerd-sigkill check_dockerd_sigkill
# SIGUSR2 is the agent's "exit, leave dockerd running" (package upgrades); Restart= brings it back.
probe agent.detach-adopt adopt_after systemctl kill --kill-who=main --signal=USR2 armhf-agent
probe agent.restart-adopt adopt_after systemctl restart armhf-agent
# --live-restore from here on: what each row's Docker does with a running container when its dockerd
# goes away (and, in update.sh, when another version replaces it).
probe agent.live-restore enable_live_restore
probe agent.live-restore-sigkill check_live_restore_sigkill
# Rows whose data disk carries a second payload: updates across Docker versions (update.sh).
if [ -d "$E2E/update" ]; then
    . "$E2E/lib/update.sh"
fi
# Rows whose data disk carries the multi-platform userlands: the host's own docker.service (issue 17).
if [ -d "$E2E/multiplatform" ]; then
    . "$E2E/lib/multiplatform.sh"
fi
