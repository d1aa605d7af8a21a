# Debian packaging of armhf-agent. See packaging/README.md.
#
#   make deb                       .deb for the distribution this runs on, into dist/
#   make deb-chroot RELEASE=trixie .deb for a Debian release, built in a cached chroot of it
#   make lock                      refresh packaging/requirements.lock (pins + hashes) from pyproject.toml
#   make lint-deb                  lintian on the .debs in dist/

SHELL := /bin/bash
RELEASE ?= bookworm
DIST := dist
STAGE := build/deb
PIP_TOOLS_VERSION := 7.6.2
CHROOT := scripts/debian-chroot.sh

.PHONY: deb deb-chroot lock lint-deb clean-deb

# dpkg-buildpackage writes into the parent of the source tree and debhelper and pip write into the
# tree itself, so the build runs on a staged copy of the tracked (and new, unignored) files:
# nothing but dist/ changes in the work tree. debian/ is the link the Debian tools expect.
deb:
	rm -rf $(STAGE) && mkdir -p $(STAGE)/src $(DIST)
	git ls-files -z --cached --others --exclude-standard | tar --null -T - -c | tar -C $(STAGE)/src -x
	ln -s packaging/debian $(STAGE)/src/debian
	cd $(STAGE)/src && dpkg-buildpackage -us -uc -b
	rm -f $(STAGE)/src/debian
	mv $(STAGE)/*.deb $(STAGE)/*.buildinfo $(STAGE)/*.changes $(DIST)/
	rm -rf $(STAGE)

# The same `make deb`, inside an unpacked copy of the cached chroot of $(RELEASE); the pip cache
# is kept next to the chroots so a rebuild downloads nothing (hashes are still checked).
deb-chroot:
	@set -euo pipefail; \
	root=$$(mktemp -d /var/tmp/armhf-agent-chroot.XXXXXX); \
	trap 'rm -rf "$$root"' EXIT; \
	$(CHROOT) unpack build $(RELEASE) $$root/fs; \
	mkdir -p $$root/fs/src; \
	git ls-files -z --cached --others --exclude-standard | tar --null -T - -c | tar -C $$root/fs/src -x; \
	cache=$${ARMHF_AGENT_CACHE:-/var/cache/armhf-agent-build}/pip; mkdir -p $$cache; \
	CHROOT_BINDS="$$cache:/root/.cache/pip" $(CHROOT) run $$root/fs make -C /src deb; \
	mkdir -p $(DIST) && mv $$root/fs/src/$(DIST)/* $(DIST)/

lint-deb:
	lintian --fail-on error,warning --display-info $(DIST)/*.deb

# Pins every runtime and build dependency with the hashes of all its files on PyPI. The host's
# pip configuration (extra indexes, constraints) is ignored: the lock must come from PyPI alone.
lock:
	python3 -m venv build/pip-tools
	build/pip-tools/bin/pip install -q pip-tools==$(PIP_TOOLS_VERSION)
	env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null build/pip-tools/bin/pip-compile \
	    --quiet --generate-hashes --allow-unsafe --build-deps-for=wheel --strip-extras \
	    --index-url=https://pypi.org/simple --no-emit-index-url \
	    --output-file=packaging/requirements.lock pyproject.toml
	sed -i '0,/^[^#]/s//--require-hashes\n&/' packaging/requirements.lock

clean-deb:
	rm -rf $(STAGE) $(DIST)
