# End-to-end run on an emulated arm64 host (QEMU TCG). Included by the top-level Makefile.
#   make e2e-arm64                       the agent's probes on a Neoverse N1 (Graviton2) guest, one row per
#                                        Debian release (12 and 13), each with the arm64 .deb built from this
#                                        tree in an arm64 chroot of that release (scripts/build-deb.sh) and
#                                        that release's armhf Docker; then a table of probe x row
#   make e2e-arm64 E2E_RELEASE=trixie    one row (bookworm, trixie, or both comma-separated)
#   make e2e-arm64 E2E_CPU=cortex-a72    Graviton1's core
#   make e2e-arm64 DEB=path/arm64.deb    the same with a given .deb (its +debNN picks the row)
#   make e2e-arm64 E2E_NO_AGENT=1        platform probes only (dockerd started by hand, no .deb)
#   make e2e-arm64 E2E_CPU=a64fx         a CPU without AArch32 at EL0 (Graviton4-like)
# Everything is cached under /var/cache/armhf-agent-build/e2e (ARMHF_AGENT_E2E_CACHE), keyed on its inputs; exit 0 only if every probe passed.
E2E_CPU ?= neoverse-n1
E2E_TIMEOUT ?=
E2E_RELEASE ?=

.PHONY: e2e-arm64
e2e-arm64:
	python3 e2e/e2e_arm64.py --cpu $(E2E_CPU) $(if $(E2E_TIMEOUT),--timeout $(E2E_TIMEOUT)) $(if $(E2E_RELEASE),--release $(E2E_RELEASE)) $(if $(DEB),--deb $(DEB)) $(if $(E2E_NO_AGENT),--no-agent)
