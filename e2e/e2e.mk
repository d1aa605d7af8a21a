# End-to-end run on an emulated arm64 host (QEMU TCG). Included by the top-level Makefile.
#   make e2e-arm64                      platform probes (no agent) on a Cortex-A72 guest
#   make e2e-arm64 DEB=path/arm64.deb   the agent's probes with that arm64 .deb installed in the guest
#   make e2e-arm64 E2E_CPU=a64fx        a CPU without AArch32 at EL0 (Graviton4-like)
# Images are cached under .cache/e2e/, keyed on the build scripts and the .deb's dependencies.
E2E_CPU ?= cortex-a72
E2E_TIMEOUT ?= 1200

.PHONY: e2e-arm64
e2e-arm64:
	python3 e2e/e2e_arm64.py --cpu $(E2E_CPU) --timeout $(E2E_TIMEOUT) $(if $(DEB),--deb $(DEB))
