"""The signed apt repository and docs/FLEET.md for the fleet tests: the doc's command blocks, a
throwaway GNUPGHOME, an HTTP server on loopback whose content can be swapped (a mirror, or a
man in the middle), and hand-made .debs for the fast checks of scripts/build-repo.sh."""

from __future__ import annotations

import http.server
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from packaging_support import REPO, RELEASE_PYTHON, run

FLEET_DOC = REPO / "docs" / "FLEET.md"
BUILD_REPO = REPO / "scripts" / "build-repo.sh"
KEYRING = "/usr/share/keyrings/armhf-agent-archive-keyring.gpg"
TAG = {"bookworm": "deb12", "trixie": "deb13"}


def why_no_repo_tools() -> str | None:
    missing = [t for t in ("aptly", "gpg", "gpgv", "dpkg-deb", "make") if shutil.which(t) is None]
    return f"{', '.join(missing)} not installed (scripts/setup.sh --test)" if missing else None


def doc_blocks() -> dict[str, str]:
    """name -> shell text of every ```sh block of docs/FLEET.md, named by the
    `<!-- fleet-test: NAME -->` comment right above it. An unnamed or doubly named block is an error:
    every command of the page must be run by a test."""
    text = FLEET_DOC.read_text()
    blocks: dict[str, str] = {}
    for m in re.finditer(r"(?:<!-- fleet-test: ([\w-]+) -->\n)?```sh\n(.*?)```", text, re.S):
        name, body = m.group(1), m.group(2)
        if name is None:
            raise AssertionError(f"{FLEET_DOC}: a sh block has no <!-- fleet-test: NAME --> above it:\n{body}")
        if name in blocks:
            raise AssertionError(f"{FLEET_DOC}: two blocks named {name}")
        blocks[name] = body
    return blocks


def block(name: str) -> str:
    return doc_blocks()[name]


def with_vars(script: str, **variables: str) -> str:
    """The block as it runs on a host: the page's variables (REPO_URL, APPROVED) set first."""
    return "".join(f"{k}='{v}'\n" for k, v in variables.items()) + script


class Gnupg:
    """A throwaway GNUPGHOME (short path: gpg-agent's socket lives in it)."""

    def __init__(self):
        self.home = Path(tempfile.mkdtemp(prefix="gpg.", dir="/tmp"))
        os.chmod(self.home, 0o700)
        self.env = {"GNUPGHOME": str(self.home)}

    def gpg(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(["gpg", "--batch", *args], env=self.env, check=check)

    def generate(self, uid: str, *spec: str, faked_time: str | None = None) -> str:
        """A key without passphrase; returns its fingerprint."""
        extra = ["--faked-system-time", faked_time] if faked_time else []
        self.gpg(*extra, "--passphrase", "", "--quick-gen-key", uid, *(spec or ("ed25519", "sign", "never")))
        return self.fingerprint(uid)

    def fingerprint(self, uid: str) -> str:
        listing = self.gpg("--with-colons", "--list-keys", "--", uid).stdout
        return [line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")][0]

    def key_from_doc(self) -> str:
        """Runs the page's signing-key block here; returns the REPO_KEY it sets."""
        out = run(["sh", "-euc", block("signing-key") + 'echo "REPO_KEY=$REPO_KEY"'], env=self.env).stdout
        return re.findall(r"^REPO_KEY=([0-9A-F]{40})$", out, re.M)[-1]

    def export(self, fingerprint: str, dest: Path) -> Path:
        dest.write_bytes(subprocess.run(["gpg", "--batch", "--export", fingerprint], capture_output=True,
                                        check=True, env={**os.environ, **self.env}).stdout)
        return dest

    def close(self) -> None:
        subprocess.run(["gpgconf", "--kill", "all"], capture_output=True, env={**os.environ, **self.env})
        shutil.rmtree(self.home, ignore_errors=True)


def publish_from_doc(gnupg: Gnupg, key: str, dist: Path, repo_dir: Path, check: bool = True) -> subprocess.CompletedProcess:
    """The page's publish block (`make repo REPO_KEY=...`) in the work tree, with the test's dist/
    and repository folders appended as make variables (the doc's command, other folders)."""
    (command,) = block("publish").strip().splitlines()
    assert command.startswith("make repo "), command
    return run(["sh", "-euc", f'cd "$1"; {command} DIST="$2" REPO_DIR="$3"', "sh", str(REPO), str(dist), str(repo_dir)],
               env={**gnupg.env, "REPO_KEY": key}, check=check)


def build_repo(gnupg: Gnupg, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    return run([str(BUILD_REPO), *args], env={**gnupg.env, **(env or {})}, check=check)


class RepoServer:
    """python's http.server on 127.0.0.1, serving `root`; `root` can be swapped to play a mirror
    whose content changed (a man in the middle, a tampered mirror). Records the paths asked for."""

    def __init__(self, root: Path):
        self.root = root
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(server.root), **kwargs)

            def send_head(self):
                # Always the content: a swap within the second of apt's last fetch would
                # otherwise look unmodified (If-Modified-Since has a 1 s resolution).
                del self.headers["If-Modified-Since"]
                return super().send_head()

            def log_message(self, fmt, *args):
                server.requests.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def fake_deb(dest_dir: Path, version: str, arch: str = "amd64", package: str = "armhf-agent",
             depends: str | None = None, extra: str = "") -> Path:
    """A tiny .deb with the control fields build-repo.sh reads; Depends defaults to what the real
    build of that release tag says (packaging/debian/rules)."""
    if depends is None:
        tag = re.search(r"\+(deb\d+)$", version)
        release = {v: k for k, v in TAG.items()}.get(tag.group(1) if tag else "", "bookworm")
        minor = RELEASE_PYTHON[release]
        major, low = minor.split(".")
        depends = f"procps, python3 (>= {minor}~), python3 (<< {major}.{int(low) + 1}), python{minor}"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "pkg"
        (root / "DEBIAN").mkdir(parents=True)
        (root / "usr/share/doc" / package).mkdir(parents=True)
        (root / "usr/share/doc" / package / "README").write_text(f"{package} {version} {extra}\n")
        (root / "DEBIAN/control").write_text(
            f"Package: {package}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: t <t@example.org>\n"
            f"Depends: {depends}\nDescription: test package\n test package {extra}\n")
        dest_dir.mkdir(parents=True, exist_ok=True)
        out = dest_dir / f"{package}_{version}_{arch}.deb"
        run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(out)])
    return out


def packages(public: Path, suite: str, arch: str) -> set[tuple[str, str]]:
    """(Package, Version) of every stanza of a published Packages file."""
    text = (public / "dists" / suite / "main" / f"binary-{arch}" / "Packages").read_text()
    found = set()
    for stanza in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line.startswith(" "))
        found.add((fields["Package"], fields["Version"]))
    return found


def split_clearsigned(text: str) -> tuple[str, str]:
    """(everything up to the signature, the armored signature) of a clearsigned file."""
    marker = "-----BEGIN PGP SIGNATURE-----"
    head, sig = text.split(marker, 1)
    return head, marker + sig
