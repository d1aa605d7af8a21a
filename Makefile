# Debian packaging of armhf-agent. See packaging/README.md.
#
#   make deb                       .deb for the distribution this runs on, into dist/
#   make deb-chroot RELEASE=trixie .deb for a Debian release, built in a cached chroot of it
#   make lock                      refresh packaging/requirements.lock (pins + hashes) from pyproject.toml
#   make lint-deb                  lintian on the .debs in dist/

RELEASE ?= bookworm
DIST := dist
STAGE := build/deb
PIP_TOOLS_VERSION := 7.6.2

.PHONY: deb deb-chroot lock lint-deb clean-deb

# The build runs on an exported copy (scripts/export-source.sh): dpkg-buildpackage writes into the
# parent of its source tree, debhelper and pip into the tree; nothing but dist/ changes here.
deb:
	rm -rf $(STAGE)
	scripts/export-source.sh $(STAGE)/armhf-agent
	scripts/build-deb.sh $(STAGE)/armhf-agent $(DIST)
	rm -rf $(STAGE)

deb-chroot:
	scripts/deb-in-chroot.sh $(RELEASE) $(DIST)

lint-deb:
	lintian --fail-on error,warning --display-info $(DIST)/*.deb

# Pins every runtime dependency, and apart every build dependency (the agent's and the sdists'
# among the runtime ones: setuptools), with the hashes of all their files on PyPI. The host's pip
# configuration (extra indexes, constraints) is ignored: the locks come from PyPI alone.
PIP_COMPILE := env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null build/pip-tools/bin/pip-compile \
	--quiet --generate-hashes --allow-unsafe --strip-extras --index-url=https://pypi.org/simple --no-emit-index-url
lock:
	python3 -m venv build/pip-tools
	build/pip-tools/bin/pip install -q pip-tools==$(PIP_TOOLS_VERSION)
	$(PIP_COMPILE) --output-file=packaging/requirements.lock pyproject.toml
	$(PIP_COMPILE) --build-deps-for=wheel --only-build-deps --output-file=packaging/build-requirements.lock pyproject.toml
	sed -i '1i --require-hashes' packaging/requirements.lock packaging/build-requirements.lock

clean-deb:
	rm -rf $(STAGE) $(DIST)

include e2e/e2e.mk
