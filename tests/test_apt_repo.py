"""scripts/build-repo.sh (`make repo`): the signed apt repository built from dist/, checked with
hand-made .debs and independent tools (gpgv against the exported keyring, sha256 of the files the
Release lists), plus its refusals; and docs/FLEET.md's consistency with what the tests run.

The real .debs, apt, unattended-upgrades and systemd are in tests/test_apt_repo_rollout.py."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from fleet_support import (FLEET_DOC, KEYRING, Gnupg, build_repo, doc_blocks, fake_deb, packages, publish_from_doc,
                           why_no_repo_tools)
from packaging_support import REPO, run

pytestmark = pytest.mark.skipif(why_no_repo_tools() is not None, reason=why_no_repo_tools() or "")

SUITES = ("bookworm", "trixie")
ARCHES = ("amd64", "arm64")
KEYRING_PKG = "armhf-agent-archive-keyring"


@pytest.fixture
def gnupg():
    home = Gnupg()
    yield home
    home.close()


@pytest.fixture
def key(gnupg):
    return gnupg.key_from_doc()


def gpgv_ok(keyring: Path, *files: Path) -> bool:
    return subprocess.run(["gpgv", "--keyring", str(keyring), *map(str, files)], capture_output=True).returncode == 0


def release_fields(path: Path) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in path.read_text().splitlines() if ": " in line and not line.startswith(" "))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_routes_every_deb_to_its_release_signs_both_suites_and_ships_the_keyring(gnupg, key, tmp_path):
    dist = tmp_path / "dist"
    wanted = {("bookworm", "amd64"): "0.1.0+deb12", ("bookworm", "arm64"): "0.1.0+deb12",
              ("trixie", "amd64"): "0.1.0+deb13", ("trixie", "arm64"): "0.2.0+deb13"}
    for (_, arch), version in wanted.items():
        fake_deb(dist, version, arch)
    publish_from_doc(gnupg, key, dist, tmp_path / "repo")
    public = tmp_path / "repo" / "public"

    keyring = public / f"{KEYRING_PKG}.gpg"
    listed = run(["gpg", "--batch", "--with-colons", "--show-keys", str(keyring)]).stdout
    assert re.findall(r"^fpr:+([0-9A-F]+):", listed, re.M)[0] == key
    stranger = Gnupg()
    try:
        other_keyring = stranger.export(stranger.generate("someone else <x@example.org>"), tmp_path / "other.gpg")
    finally:
        stranger.close()

    for suite in SUITES:
        dists = public / "dists" / suite
        release = release_fields(dists / "Release")
        assert (release["Origin"], release["Codename"], release["Components"]) == ("armhf-agent", suite, "main")
        assert release["Architectures"].split() == list(ARCHES)
        assert release["Acquire-By-Hash"] == "yes"
        # Both ways apt verifies, checked with gpgv and the exported keyring, not with aptly's word.
        assert gpgv_ok(keyring, dists / "InRelease") and gpgv_ok(keyring, dists / "Release.gpg", dists / "Release")
        assert not gpgv_ok(other_keyring, dists / "InRelease")
        signed = subprocess.run(["gpgv", "--keyring", str(keyring), "--output", "-", str(dists / "InRelease")],
                                capture_output=True, check=True).stdout.decode()
        assert signed == (dists / "Release").read_text(), "InRelease and Release say different things"
        # Every index the Release lists is there with that hash.
        listed_files = re.findall(r"^ ([0-9a-f]{64}) +\d+ (\S+)$", (dists / "Release").read_text().split("SHA256:")[1], re.M)
        assert {name for _, name in listed_files} >= {f"main/binary-{a}/Packages" for a in ARCHES}
        for digest, name in listed_files:
            assert sha256(dists / name) == digest, name
        for arch in ARCHES:
            got = packages(public, suite, arch)
            agent = {v for p, v in got if p == "armhf-agent"}
            assert agent == {wanted[(suite, arch)]}, (suite, arch, got)
            assert {p for p, _ in got} == {"armhf-agent", KEYRING_PKG}

    # The keyring package carries exactly the published keyring file, root-owned, 0644.
    (deb,) = public.glob(f"{KEYRING_PKG}_*_all.deb")
    contents = run(["dpkg-deb", "-c", str(deb)]).stdout
    assert re.search(rf"^-rw-r--r-- root/root .* \.{re.escape(KEYRING)}$", contents, re.M), contents
    extracted = tmp_path / "x"
    run(["dpkg-deb", "-x", str(deb), str(extracted)])
    assert (extracted / KEYRING.lstrip("/")).read_bytes() == keyring.read_bytes()
    assert run(["dpkg-deb", "-f", str(deb), "Architecture"]).stdout.strip() == "all"


@pytest.mark.slow
def test_publishing_again_keeps_older_versions_and_rebuilds_the_keyring_identically(gnupg, key, tmp_path):
    dist, repo = tmp_path / "dist", tmp_path / "repo"
    fake_deb(dist, "0.1.0+deb12")
    publish_from_doc(gnupg, key, dist, repo)
    public = repo / "public"
    (keyring_deb,) = public.glob(f"{KEYRING_PKG}_*_all.deb")
    first = {p.relative_to(public): sha256(p) for p in (public / "pool").rglob("*.deb")}

    fake_deb(dist, "0.2.0+deb12")
    publish_from_doc(gnupg, key, dist, repo)
    assert {v for p, v in packages(public, "bookworm", "amd64") if p == "armhf-agent"} == {"0.1.0+deb12", "0.2.0+deb12"}
    # What was published stays byte for byte, the keyring package included (a rebuild of it
    # with other bytes under the same version would be refused).
    assert {p.relative_to(public): sha256(p) for p in (public / "pool").rglob("*.deb") if p.relative_to(public) in first} == first
    assert sha256(keyring_deb) == first[next(p for p in first if p.name == keyring_deb.name)]

    # dist/ emptied of the old build: the repository still offers it, for rollbacks.
    (dist / "armhf-agent_0.1.0+deb12_amd64.deb").unlink()
    publish_from_doc(gnupg, key, dist, repo)
    assert ("armhf-agent", "0.1.0+deb12") in packages(public, "bookworm", "amd64")


BAD_DEBS = {
    "no release tag": (dict(version="0.3.0"), "version '0.3.0' has no +deb12/+deb13 release tag"),
    "unknown release": (dict(version="0.3.0+deb11"), "release tag 'deb11' of version '0.3.0+deb11' is not one this repository serves"),
    "architecture": (dict(version="0.3.0+deb12", arch="i386"), "architecture 'i386' is not one this repository serves"),
    "python of the other release": (dict(version="0.3.0+deb12", depends="python3 (>= 3.13~), python3 (<< 3.14), python3.13"),
                                    "version '0.3.0+deb12' is for bookworm (Python 3.11) but its Depends does not name python3.11"),
    "python prefix only": (dict(version="0.3.0+deb13", depends="python3 (>= 3.13~), python3.130"),
                           "version '0.3.0+deb13' is for trixie (Python 3.13) but its Depends does not name python3.13"),
    "another package": (dict(version="1.0+deb12", package="docker.io"), "package 'docker.io', not armhf-agent"),
}


@pytest.mark.parametrize("case", sorted(BAD_DEBS))
def test_a_bad_deb_is_refused_by_name_and_the_published_repository_stays(case, gnupg, key, tmp_path):
    dist, repo = tmp_path / "dist", tmp_path / "repo"
    fake_deb(dist, "0.1.0+deb12")
    publish_from_doc(gnupg, key, dist, repo)
    before = {p: p.read_bytes() for p in (repo / "public" / "dists").rglob("*") if p.is_file()}

    kwargs, message = BAD_DEBS[case]
    bad = fake_deb(dist, **kwargs)
    proc = publish_from_doc(gnupg, key, dist, repo, check=False)
    assert proc.returncode != 0
    assert f"build-repo.sh: {bad}: {message}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert {p: p.read_bytes() for p in (repo / "public" / "dists").rglob("*") if p.is_file()} == before


def test_a_file_that_is_not_a_deb_is_refused_by_name(gnupg, key, tmp_path):
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "armhf-agent_0.1.0+deb12_amd64.deb").write_bytes(b"!<arch>\nnot really\n")
    proc = build_repo(gnupg, "--key", key, str(dist), str(tmp_path / "repo"), check=False)
    assert proc.returncode == 2
    assert f"{dist}/armhf-agent_0.1.0+deb12_amd64.deb: not a Debian package" in proc.stderr


def test_an_empty_dist_is_refused(gnupg, key, tmp_path):
    (tmp_path / "dist").mkdir()
    proc = build_repo(gnupg, "--key", key, str(tmp_path / "dist"), str(tmp_path / "repo"), check=False)
    assert proc.returncode == 2 and f"no .deb in {tmp_path / 'dist'}" in proc.stderr


def test_another_build_under_a_published_version_is_refused_and_the_published_one_stays(gnupg, key, tmp_path):
    dist, repo = tmp_path / "dist", tmp_path / "repo"
    fake_deb(dist, "0.1.0+deb12", extra="first build")
    publish_from_doc(gnupg, key, dist, repo)
    (pooled,) = (repo / "public" / "pool").rglob("armhf-agent_0.1.0+deb12_amd64.deb")
    original, inrelease = pooled.read_bytes(), (repo / "public/dists/bookworm/InRelease").read_bytes()

    fake_deb(dist, "0.1.0+deb12", extra="a different build")       # same name, other bytes
    proc = publish_from_doc(gnupg, key, dist, repo, check=False)
    assert proc.returncode != 0
    # aptly names the package; its words differ by release ("conflict in package ..." in bookworm's
    # 1.5, "package already exists and is different: ..." in trixie's 1.6).
    assert "armhf-agent_0.1.0+deb12_amd64" in proc.stderr, proc.stderr
    assert "cannot be replaced by another build: give the new build a higher version" in proc.stderr
    assert pooled.read_bytes() == original
    assert (repo / "public/dists/bookworm/InRelease").read_bytes() == inrelease


def test_signing_keys_that_cannot_sign_the_repository_are_refused(gnupg, tmp_path):
    dist = tmp_path / "dist"
    fake_deb(dist, "0.1.0+deb12")
    good = gnupg.generate("armhf-agent archive <apt@example.org>")
    gnupg.generate("armhf-agent archive two <apt2@example.org>")
    expired = gnupg.generate("expired <old@example.org>", "ed25519", "sign", "1d", faked_time="20200101T000000")
    certify_only = gnupg.generate("certify only <c@example.org>", "ed25519", "cert", "never")
    stranger = Gnupg()
    try:
        public_only = stranger.generate("public only <p@example.org>")
        gnupg.gpg("--import", str(stranger.export(public_only, tmp_path / "p.gpg")))
    finally:
        stranger.close()
    cases = {
        "": "no signing key: give --key KEY (or REPO_KEY)",
        "nobody@example.org": "key 'nobody@example.org' names no secret key",
        "armhf-agent archive": "key 'armhf-agent archive' names 2 secret keys; give the fingerprint of one",
        expired: f"key '{expired}' ({expired}) has expired",
        certify_only: f"key '{certify_only}' ({certify_only}) cannot sign",
        public_only: f"key '{public_only}' names no secret key",
    }
    for given, message in cases.items():
        proc = publish_from_doc(gnupg, given, dist, tmp_path / "repo", check=False)
        assert proc.returncode != 0 and message in proc.stderr, (given, proc.stderr)
        assert not (tmp_path / "repo" / "public" / "dists").exists(), "a refused key published something"
    publish_from_doc(gnupg, good, dist, tmp_path / "repo")


def test_the_origin_hosts_select_by_cannot_change_once_published(gnupg, key, tmp_path):
    dist, repo = tmp_path / "dist", tmp_path / "repo"
    fake_deb(dist, "0.1.0+deb12")
    build_repo(gnupg, "--key", key, str(dist), str(repo))
    proc = build_repo(gnupg, "--key", key, "--origin", "other", str(dist), str(repo), check=False)
    assert proc.returncode == 2
    assert f"{repo} publishes origin 'armhf-agent', not 'other'" in proc.stderr
    proc = build_repo(gnupg, "--key", key, "--origin", "bad origin", str(dist), str(tmp_path / "r2"), check=False)
    assert proc.returncode == 2 and "origin 'bad origin' must be letters" in proc.stderr


@pytest.mark.slow
def test_a_key_rotation_reaches_hosts_through_the_keyring_package(gnupg, tmp_path):
    dist, repo = tmp_path / "dist", tmp_path / "repo"
    public = repo / "public"
    fake_deb(dist, "0.1.0+deb12")
    old = gnupg.generate("archive 2024 <apt@example.org>", faked_time="20240101T000000")
    build_repo(gnupg, "--key", old, str(dist), str(repo))
    (first,) = public.glob(f"{KEYRING_PKG}_*_all.deb")

    # Step 1: the keyring carries both keys, still signed by the old one. Its package version is
    # higher (the new key is newer), so hosts upgrade to it.
    new = gnupg.generate("archive 2025 <apt@example.org>", faked_time="20250101T000000")
    build_repo(gnupg, "--key", old, str(dist), str(repo), env={"REPO_KEYRING_KEYS": f"{old} {new}"})
    versions = sorted(v for p, v in packages(public, "bookworm", "amd64") if p == KEYRING_PKG)
    assert len(versions) == 2
    assert run(["dpkg", "--compare-versions", versions[1], "gt", versions[0]], check=False).returncode == 0
    assert first.name.split("_")[1] == versions[0]
    listed = run(["gpg", "--batch", "--with-colons", "--show-keys", str(public / f"{KEYRING_PKG}.gpg")]).stdout
    assert {old, new} <= set(re.findall(r"^fpr:+([0-9A-F]+):", listed, re.M))
    # Only the current keyring package beside the suites: the page installs it by a glob.
    assert [p.name for p in public.glob(f"{KEYRING_PKG}_*_all.deb")] == [f"{KEYRING_PKG}_{versions[1]}_all.deb"]

    # Step 2: signed by the new key; a host holding the two-key keyring verifies it.
    build_repo(gnupg, "--key", new, str(dist), str(repo), env={"REPO_KEYRING_KEYS": f"{old} {new}"})
    assert gpgv_ok(public / f"{KEYRING_PKG}.gpg", public / "dists/bookworm/InRelease")
    only_old = gnupg.export(old, tmp_path / "old.gpg")
    assert not gpgv_ok(only_old, public / "dists/bookworm/InRelease")

    proc = build_repo(gnupg, "--key", new, str(dist), str(repo), env={"REPO_KEYRING_KEYS": old}, check=False)
    assert proc.returncode == 2 and f"REPO_KEYRING_KEYS must include the signing key {new}" in proc.stderr

    # Step 3, the old key dropped: the newest key is the same, so the version would be too; the
    # changed keyring is refused under it, and taken under a higher one.
    proc = build_repo(gnupg, "--key", new, str(dist), str(repo), env={"REPO_KEYRING_KEYS": new}, check=False)
    assert proc.returncode == 2
    assert f"differs from the published {KEYRING_PKG} {versions[1]} (e.g. a key was dropped): set REPO_KEYRING_VERSION higher" in proc.stderr
    build_repo(gnupg, "--key", new, str(dist), str(repo), env={"REPO_KEYRING_KEYS": new, "REPO_KEYRING_VERSION": versions[1] + ".1"})
    listed = run(["gpg", "--batch", "--with-colons", "--show-keys", str(public / f"{KEYRING_PKG}.gpg")]).stdout
    assert set(re.findall(r"^fpr:+([0-9A-F]+):", listed, re.M)) == {new}


def test_the_fleet_page_runs_every_block_and_names_real_panels_and_alerts():
    blocks = doc_blocks()
    # Every block is run by a test: by this module (signing-key, publish) or by the rollout module.
    rollout = (REPO / "tests" / "test_apt_repo_rollout.py").read_text()
    run_by_tests = set(re.findall(r'\b(?:block|doc)\("([\w-]+)"', rollout)) | {"signing-key", "publish"}
    assert set(blocks) == run_by_tests, f"run by no test: {set(blocks) - run_by_tests}; not in the page: {run_by_tests - set(blocks)}"

    text = FLEET_DOC.read_text()
    dashboard = json.loads((REPO / "etc/grafana/armhf-agent.json").read_text())
    titles = {p["title"] for p in dashboard["panels"]}
    named = set(re.findall(r"^- \*\*(.+?)\*\*", text, re.M))
    assert named and named <= titles, named - titles
    rules = (REPO / "etc/prometheus/armhf-agent.rules.yml").read_text()
    for alert in re.findall(r"`(Armhf\w+)`", text):
        assert f"- alert: {alert}\n" in rules, alert
    # The panels that mirror the alerts query what the alerts evaluate.
    exprs = {p["title"]: p["targets"][0]["expr"] for p in dashboard["panels"] if p.get("targets")}
    folded = " ".join(rules.split())
    assert " ".join(exprs["Hosts off the fleet's main version"].split()) in folded
    restarts = exprs["Agent restarts since its version was installed (6h)"]
    assert restarts.replace(") > 0 and on", ") >= 3 and on") in folded


def test_make_repo_without_a_key_says_what_to_give(tmp_path):
    dist = tmp_path / "dist"
    fake_deb(dist, "0.1.0+deb12")
    env = {k: v for k, v in os.environ.items() if k != "REPO_KEY"}
    proc = subprocess.run(["make", "-C", str(REPO), "repo", f"DIST={dist}", f"REPO_DIR={tmp_path / 'repo'}"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "no signing key: give --key KEY (or REPO_KEY)" in proc.stderr


def test_check_names_each_missing_tool(tmp_path):
    assert subprocess.run([str(REPO / "scripts/build-repo.sh"), "--check"], capture_output=True).returncode == 0
    proc = subprocess.run([str(REPO / "scripts/build-repo.sh"), "--check"], capture_output=True, text=True,
                          env={**os.environ, "PATH": str(tmp_path)})
    assert proc.returncode == 2
    for tool in ("aptly (aptly)", "gpg (gnupg)", "gpgv (gpgv)", "dpkg-deb (dpkg)"):
        assert tool in proc.stderr, proc.stderr
