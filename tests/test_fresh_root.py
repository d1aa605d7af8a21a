"""A brand-new machine, reproduced: `scripts/setup.sh --test` in a fresh Debian minbase root, then the
host checks of every later CI stage inside it (issue 11).

CI runs `.ci/run` on machines where nothing was installed by hand. A tool that is here only because
someone once installed it (arch-test was one: a Recommends of mmdebstrap that `--no-install-recommends`
drops) passes every test on this machine and fails CI on a new one. So: unpack the cached minbase root
of each release (`scripts/debian-chroot.sh`, kind `install`: what a fresh host has), copy the tree in,
run setup.sh there, then ask each later stage whether its host is ready:

- the tests themselves: promtool where scripts/test.sh points PROMTOOL, the venv importing the agent;
- the chroot builder (`scripts/debian-chroot.sh check`), which the packaging tests and e2e use;
- the apt repository builder (`scripts/build-repo.sh --check`), which the fleet tests use;
- the arm64 end-to-end run (`e2e/e2e_arm64.py --check-host`).

Then the unprivileged test subset (`-m "not dockerd and not slow and not chroot"`, what README calls
the fast subset) runs inside that root with its own `.venv/bin/python` (Debian 12's Python 3.11,
Debian 13's 3.13) under CI=true, so a test that would skip for a missing component fails instead
(issue 15: nothing in setup.sh or test.sh may assume bookworm).

Network: only the package archives (Debian's, and PyPI for the venv), as on a real new machine.
Downloads are cached beside the chroots so a warm run fetches nothing.
"""

from __future__ import annotations

import pytest

from packaging_support import CACHE, Chroot, export_source, why_no_chroots

pytestmark = [pytest.mark.slow, pytest.mark.chroot,
              pytest.mark.skipif(why_no_chroots() is not None, reason=why_no_chroots() or "")]

SRC = "/src/armhf-agent"


# What README calls the fast subset; scripts/test.sh passes the same marker expression.
FAST_SUBSET = "not dockerd and not slow and not chroot"


@pytest.fixture(scope="module", params=["bookworm", "trixie"])
def fresh_root(request):
    """A fresh root of the release with the tree in it and setup.sh --test run once, for every test
    of this module (setup installs QEMU, the venv and more: minutes, not to be paid twice)."""
    release = request.param
    root = Chroot("install", release)
    try:
        export_source(root.path(SRC))
        # apt's and pip's downloads outlive the root: a warm run downloads nothing.
        root.bind(CACHE / "fresh-root" / release / "apt-archives", "/var/cache/apt/archives")
        root.bind(CACHE / "pip", "/root/.cache/pip")
        setup = root.run("/bin/bash", f"{SRC}/scripts/setup.sh", "--test", check=False)
        yield release, root, setup
    finally:
        root.remove()


def setup_done(fresh_root):
    release, root, setup = fresh_root
    assert setup.returncode == 0, f"{release}: setup.sh --test failed:\n{setup.stdout[-3000:]}\n{setup.stderr[-3000:]}"
    return release, root


def test_setup_installs_what_every_ci_stage_needs(fresh_root):
    release, root = setup_done(fresh_root)
    stages = {
        "tests: promtool": [f"{SRC}/.cache/promtool/usr/bin/promtool", "--version"],
        "tests: the venv imports the agent": [f"{SRC}/.venv/bin/python", "-c", "import agent.cli, docker, hypothesis"],
        "chroot builder": [f"{SRC}/scripts/debian-chroot.sh", "check"],
        "apt repository (make repo)": [f"{SRC}/scripts/build-repo.sh", "--check"],
        "e2e-arm64": ["python3", f"{SRC}/e2e/e2e_arm64.py", "--check-host"],
    }
    failed = {}
    for stage, command in stages.items():
        done = root.run(*command, check=False)
        if done.returncode != 0:
            failed[stage] = (done.stdout + done.stderr).strip()[-1000:]
    assert not failed, f"{release}: after setup.sh --test in a fresh root, these CI stages lack tools: {failed}"


def test_the_fast_subset_passes_in_the_fresh_root(fresh_root):
    release, root = setup_done(fresh_root)
    # As on a booted host: the suite unshares mount namespaces (the launcher, the shim's passwd test)
    # and reads /sys/devices/system/cpu/online.
    done = root.sh(f"cd {SRC} && CI=true PROMTOOL={SRC}/.cache/promtool/usr/bin/promtool "
                   f".venv/bin/python -m pytest -q -p no:cacheprovider -m '{FAST_SUBSET}'", check=False, as_host=True)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    # pytest exits 5 when it collected nothing (a marker typo, a broken conftest): a failure too.
    assert done.returncode == 0, f"{release}: the fast subset failed in a fresh root ({summary}):\n" \
                                 f"{done.stdout[-6000:]}\n{done.stderr[-2000:]}"
