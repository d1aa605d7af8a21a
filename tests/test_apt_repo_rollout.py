"""The fleet's path (docs/FLEET.md), with the real .debs: a signed repository served over HTTP on
loopback, added to a fresh host with Signed-By, installed, attacked, held, upgraded canary-first,
selected by unattended-upgrades, rolled back; and under systemd, the upgrade and the rollback
through the repository with a container running and a client attached.

Every host-side command is the page's own block (fleet_support.block), run as written with the
page's variables REPO_URL and APPROVED set. Steps that are the test's, not an operator's, say so.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

import systemd_container
from fleet_support import (KEYRING, TAG, Gnupg, RepoServer, block, build_repo, publish_from_doc, split_clearsigned,
                           why_no_repo_tools, with_vars)
from harness import have_docker, wait_for
from packaging_support import CACHE, RELEASE_PYTHON, Chroot, changelog_version, deb_field, release_debs, why_no_chroots
from systemd_container import (UNIT, SystemdContainer, assert_handover, configure_for_test_dockerd, import_busybox,
                               install_stand_in_payload, start_attached_client)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.chroot,
    pytest.mark.skipif(why_no_chroots() is not None, reason=why_no_chroots() or ""),
    pytest.mark.skipif(why_no_repo_tools() is not None, reason=why_no_repo_tools() or ""),
]

V1 = changelog_version()                      # the upstream versions the agent reports (APPROVED)
V2 = V1 + "+upgradetest"                      # packaging_support.release_debs' higher build
HOST_DIR = "/root/fleet"                      # where configuration management dropped the keyring .deb


@pytest.fixture
def signing():
    """The operator's key, made by the page's own command, and an attacker's key."""
    operator, attacker = Gnupg(), Gnupg()
    key = operator.key_from_doc()
    evil = attacker.generate("armhf-agent archive <apt@example.org>")   # same name, other key
    yield operator, key, attacker, evil
    operator.close()
    attacker.close()


def dist_of(tmp: Path, name: str, *debs: Path) -> Path:
    dist = tmp / name
    dist.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        shutil.copy2(deb, dist / deb.name)
    return dist


class Host:
    """An install chroot (a fresh minimal Debian host) that runs the page's blocks."""

    def __init__(self, release: str):
        self.release = release
        self.root = Chroot("install", release)
        # apt's downloads are kept between runs; our own packages are taken out again (cleanup()).
        self.archives = CACHE / "apt" / release / "archives"
        self.root.bind(self.archives, "/var/cache/apt/archives")

    def sh(self, script: str, check: bool = False, **variables: str):
        return self.root.sh(f"mkdir -p {HOST_DIR}; cd {HOST_DIR}\n" + with_vars(script, **variables), check=check)

    def doc(self, name: str, **variables: str):
        """The page's block `name`, which must succeed."""
        proc = self.sh(block(name), **variables)
        assert proc.returncode == 0, f"docs/FLEET.md block {name!r} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        return proc

    def version(self) -> str:
        return self.root.run("dpkg-query", "-W", "-f=${Version}", "armhf-agent", check=False).stdout

    def forget_downloaded_agents(self) -> None:
        for deb in self.archives.rglob("armhf-agent*"):
            deb.unlink()

    def cleanup(self) -> None:
        self.forget_downloaded_agents()
        self.root.remove()


def hostile_copies(tmp: Path, good: Path, evil: Path, release: str) -> dict[str, tuple[Path, dict[str, str]]]:
    """Mirrors an attacker could serve at the repository's URL, each with what apt says about it
    (by release: Debian 12's apt runs gpgv, Debian 13's sqv). `good` lists v1 only; `evil` is a whole
    repository with v1 and v2, signed by the attacker's key."""
    def copy(name: str, source: Path) -> Path:
        dest = tmp / f"mirror-{name}"
        shutil.copytree(source, dest, symlinks=True)
        return dest

    dists = Path("dists") / release
    good_inrelease = (good / dists / "InRelease").read_text()
    # The attacker's index (v2 in it, hashes consistent), under the operator's signature of another text.
    tampered = copy("tampered", evil)
    head, _ = split_clearsigned((tampered / dists / "InRelease").read_text())
    (tampered / dists / "InRelease").write_text(head + split_clearsigned(good_inrelease)[1])
    # The signature stripped: the attacker's Release served as InRelease.
    stripped = copy("stripped", evil)
    shutil.copy(stripped / dists / "Release", stripped / dists / "InRelease")
    # No InRelease at all (apt falls back to Release + Release.gpg): the operator's old Release.gpg.
    detached = copy("detached", evil)
    (detached / dists / "InRelease").unlink()
    shutil.copy(good / dists / "Release.gpg", detached / dists / "Release.gpg")
    bookworm = release == "bookworm"
    return {
        "tampered InRelease": (tampered, {"update": "BADSIG" if bookworm else "Message has been manipulated"}),
        "signed by another key": (copy("otherkey", evil), {"update": "NO_PUBKEY" if bookworm else "Missing key"}),
        "signature stripped": (stripped, {"update": "Clearsigned file isn't valid"}),
        "Release.gpg of another Release": (detached, {"update": "BADSIG" if bookworm else "Message has been manipulated"}),
    }


@pytest.mark.parametrize("release", sorted(RELEASE_PYTHON))
def test_repository_install_refusals_canary_upgrade_and_rollback(release, signing, tmp_path):
    operator, key, attacker, evil_key = signing
    debs = release_debs(release)
    v1, v2 = deb_field(debs["v1"], "Version"), deb_field(debs["v2"], "Version")
    assert (v1, v2) == (f"{V1}+{TAG[release]}", f"{V2}+{TAG[release]}")

    repo = tmp_path / "repo"
    publish_from_doc(operator, key, dist_of(tmp_path, "dist", debs["v1"]), repo)
    good = repo / "public"
    build_repo(attacker, "--key", evil_key, str(dist_of(tmp_path, "evil-dist", debs["v1"], debs["v2"])), str(tmp_path / "evil"))
    mirrors = hostile_copies(tmp_path, good, tmp_path / "evil" / "public", release)

    server = RepoServer(good)
    host = Host(release)
    try:
        url = {"REPO_URL": server.url}
        (keyring_deb,) = good.glob("armhf-agent-archive-keyring_*_all.deb")
        host.root.put(keyring_deb, HOST_DIR)
        host.doc("add-repository", **url)
        assert host.root.path(KEYRING).read_bytes() == (good / "armhf-agent-archive-keyring.gpg").read_bytes()

        # A fresh host behind a hostile mirror: apt refuses it, the page's install fails.
        for case, (mirror, says) in mirrors.items():
            server.root = mirror
            install = host.sh(block("install"), **url)
            output = install.stdout + install.stderr
            assert install.returncode == 100, (case, output)
            assert says["update"] in output and "is not signed" in output, (case, output)
            assert host.version() == "", f"{case}: armhf-agent installed from a hostile mirror"
            missing = host.sh("apt-get install -y armhf-agent")
            assert missing.returncode == 100 and "Unable to locate package armhf-agent" in missing.stderr, (case, missing.stderr)

        # The real mirror: installed over HTTP from our server.
        server.root, server.requests[:] = good, []
        host.doc("install", **url)
        assert host.version() == v1
        assert f"/dists/{release}/InRelease" in server.requests
        assert any(path.startswith("/pool/main/a/armhf-agent/") for path in server.requests)
        assert host.root.run("armhf-agent", "--version").stdout.strip() == f"armhf-agent {V1}"

        # The same mirrors once the host has the repository's index (every hostile one offers v2):
        # a bad signature leaves the old index in use and plain `apt-get update` exits 0, which is
        # why the page's commands say --error-on=any; a missing signature fails either way.
        for case, (mirror, says) in mirrors.items():
            server.root = mirror
            plain = host.sh("apt-get update")
            output = plain.stdout + plain.stderr
            assert says["update"] in output, (case, output)
            if case in ("tampered InRelease", "signed by another key"):
                assert plain.returncode == 0, (case, output)
                assert "The repository is not updated and the previous index files will be used" in output
            else:
                assert plain.returncode == 100 and "is no longer signed" in output, (case, output)
            upgrade = host.sh(block("upgrade"), **url)
            assert upgrade.returncode == 100 and says["update"] in upgrade.stderr, (case, upgrade.stderr)
            assert v2 not in host.doc("policy").stdout, f"{case}: the hostile index is in use"
            assert host.version() == v1
        server.root = good

        # unattended-upgrades from Debian's archive, told about the repository's origin by the page.
        # Test only: Debian's own origins are cleared, so that the dry runs below are about
        # armhf-agent alone whatever the archive published since the chroot was cached.
        host.doc("unattended-upgrades")
        assert 'APT::Periodic::Unattended-Upgrade "1";' in host.root.path("/etc/apt/apt.conf.d/20auto-upgrades").read_text()
        host.root.path("/etc/apt/apt.conf.d/50unattended-upgrades-test-only").write_text(
            "#clear Unattended-Upgrade::Origins-Pattern;\n#clear Unattended-Upgrade::Allowed-Origins;\n")

        # This host is not a canary: held at v1. Then v2 is published.
        host.doc("hold", APPROVED=V1)
        publish_from_doc(operator, key, dist_of(tmp_path, "dist", debs["v2"]), repo)
        host.doc("upgrade", **url)
        assert host.version() == v1, "the pin did not hold"
        policy = host.doc("policy").stdout
        assert f"Candidate: {v1}" in policy and v2 in policy, policy
        dry = host.doc("unattended-dry-run").stdout
        assert "No packages found that can be upgraded unattended" in dry and "Packages that will be upgraded" not in dry, dry

        # As a canary (unpinned) this host would take v2.
        host.doc("canary")
        assert f"Candidate: {v2}" in host.doc("policy").stdout

        # Promoted: the pin moves to v2, unattended-upgrades selects it (and only because of the
        # page's Origins-Pattern: without that file it does not); the page's upgrade takes it.
        host.doc("hold", APPROVED=V2)
        pattern = host.root.path("/etc/apt/apt.conf.d/51armhf-agent-unattended-upgrades")
        saved = pattern.read_text()
        pattern.unlink()
        dry = host.doc("unattended-dry-run").stdout
        assert "Packages that will be upgraded" not in dry, dry
        pattern.write_text(saved)
        dry = host.doc("unattended-dry-run").stdout
        assert "Packages that will be upgraded: armhf-agent" in dry, dry[-3000:]
        assert "Checking: armhf-agent" in dry and "origin:'armhf-agent'" in dry
        assert host.version() == v1, "a dry run installed something"
        host.doc("upgrade", **url)
        assert host.version() == v2
        assert host.root.run("armhf-agent", "--version").stdout.strip() == f"armhf-agent {V2}"

        # A package that does not match the signed index is refused (one byte flipped in v1's .deb,
        # the version a rollback fetches; test only: apt's cached copy is forgotten first).
        host.forget_downloaded_agents()
        flipped = tmp_path / "mirror-flipped"
        shutil.copytree(good, flipped)
        (pooled,) = (flipped / "pool").rglob(f"armhf-agent_{v1}_*.deb")
        data = bytearray(pooled.read_bytes())
        data[len(data) // 2] ^= 0x01
        pooled.write_bytes(bytes(data))
        server.root = flipped
        host.doc("hold", APPROVED=V1)
        refused = host.sh(block("downgrade"), APPROVED=V1)
        assert refused.returncode == 100 and "Hash Sum mismatch" in refused.stdout + refused.stderr, refused.stderr
        assert host.version() == v2
        server.root = good

        # Roll back: held at v1 (above), downgraded by the page's command; `-y` alone refuses.
        plain_y = host.sh(f"apt-get install -y armhf-agent={v1}")
        assert plain_y.returncode == 100
        assert "Packages were downgraded and -y was used without --allow-downgrades" in plain_y.stderr
        host.doc("downgrade", APPROVED=V1)
        assert host.version() == v1
        host.doc("upgrade", **url)
        assert host.version() == v1, "the fleet's pin did not keep the host off the bad version"
    finally:
        server.stop()
        host.cleanup()


SYSTEMD_RELEASE = "bookworm"      # the release of this machine's dockerd tests, as in test_packaging_systemd
REPO_INSIDE = "/srv/armhf-agent-repo"
PORT = 8080


@pytest.fixture(scope="module")
def systemd_host():
    if not have_docker():
        pytest.skip("needs root and docker.io (dockerd)")
    with systemd_container.systemd_host(SYSTEMD_RELEASE) as host:
        yield host


def build_info(box: SystemdContainer) -> list[str]:
    """The agent's own armhf_agent_build_info samples, scraped over HTTP inside the container."""
    scrape = ("import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9742/metrics', timeout=5)"
              ".read().decode())")
    text = box.exec("python3", "-c", scrape).stdout
    return [line for line in text.splitlines() if line.startswith("armhf_agent_build_info{")]


@pytest.mark.dockerd
def test_upgrade_and_rollback_through_the_repository_under_systemd(systemd_host, signing, tmp_path):
    """The container has no network (--network none), so the repository is bind-mounted into it and
    served there by python's http.server on 127.0.0.1: apt still fetches it over HTTP."""
    dockerd, image, base = systemd_host
    operator, key, _, _ = signing
    debs = release_debs(SYSTEMD_RELEASE)
    v1, v2 = deb_field(debs["v1"], "Version"), deb_field(debs["v2"], "Version")
    repo = base / f"repo-{uuid.uuid4().hex[:6]}"
    publish_from_doc(operator, key, dist_of(tmp_path, "dist", debs["v1"]), repo)
    name = f"sd{uuid.uuid4().hex[:6]}"
    box = SystemdContainer(dockerd, image, name, base / f"{name}-docker", volumes=((repo / "public", REPO_INSIDE),))
    try:
        # Test only: nothing but this repository is reachable, so Debian's sources go (apt-get
        # update --error-on=any would fail on them); everything else the .deb needs is in the image.
        box.sh("rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*")
        box.exec("systemd-run", "--unit=armhf-agent-repo-http", "python3", "-m", "http.server", "--bind", "127.0.0.1",
                 "--directory", REPO_INSIDE, str(PORT))
        probe = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{PORT}/dists/{SYSTEMD_RELEASE}/InRelease')"
        wait_for(lambda: box.exec("python3", "-c", probe, check=False).returncode == 0, 30, 0.2, "the repository's HTTP server")
        url = {"REPO_URL": f"http://127.0.0.1:{PORT}"}

        def doc(block_name: str, **variables: str):
            return box.sh(f"cd {REPO_INSIDE}\n" + with_vars(block(block_name), **variables))

        doc("add-repository", **url)           # the keyring .deb is in the served folder
        doc("install", **url)
        assert box.exec("dpkg-query", "-W", "-f=${Version}", "armhf-agent").stdout == v1
        box.wait_prop(UNIT, "ActiveState", "active", 60)
        assert "GET /dists/bookworm/InRelease" in box.exec("journalctl", "-u", "armhf-agent-repo-http", "--no-pager").stdout
        configure_for_test_dockerd(box)
        install_stand_in_payload(box)
        import_busybox(box, tmp_path)
        assert [f'version="{V1}"' in line for line in build_info(box)] == [True]

        # v2 is published; the page's upgrade takes it, the running container and its client stay.
        publish_from_doc(operator, key, dist_of(tmp_path, "dist", debs["v2"]), repo)
        start_attached_client(box)
        assert_handover(box, lambda: doc("upgrade", **url), v2)
        wait_for(lambda: [f'version="{V2}"' in line for line in build_info(box)] == [True], 30, 0.5,
                 f"armhf_agent_build_info to say {V2}")

        # The rollback: the page's hold and downgrade, the same handover.
        start_attached_client(box)
        doc("hold", APPROVED=V1)
        assert_handover(box, lambda: doc("downgrade", APPROVED=V1), v1)
        wait_for(lambda: [f'version="{V1}"' in line for line in build_info(box)] == [True], 30, 0.5,
                 f"armhf_agent_build_info to say {V1}")
        doc("upgrade", **url)
        assert box.exec("dpkg-query", "-W", "-f=${Version}", "armhf-agent").stdout == v1
    finally:
        box.remove()
