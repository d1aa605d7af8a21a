# Debian packaging of armhf-agent. See packaging/README.md.
#
#   make deb                       .deb for the distribution this runs on, into dist/
#   make deb-chroot RELEASE=trixie .deb for a Debian release, built in a cached chroot of it
#   make lock                      refresh packaging/requirements.lock (pins + hashes) from pyproject.toml
#   make lint-deb                  lintian on the .debs in dist/
#   make repo REPO_KEY=FPR         signed apt repository (aptly) of the .debs in dist/, in build/repo;
#                                  serve build/repo/public (docs/FLEET.md)

RELEASE ?= bookworm
DIST := dist
STAGE := build/deb
PIP_TOOLS_VERSION := 7.6.2
REPO_DIR ?= build/repo
REPO_KEY ?=
REPO_ORIGIN ?= armhf-agent

.PHONY: deb deb-chroot lock lint-deb clean-deb repo

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

# Adds every .deb of dist/ to its release's suite (by its +deb12/+deb13 tag) and re-signs; versions
# published before stay, for rollbacks. The keyring hosts need is in $(REPO_DIR)/public.
repo:
	scripts/build-repo.sh --key "$(REPO_KEY)" --origin "$(REPO_ORIGIN)" $(DIST) $(REPO_DIR)

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
