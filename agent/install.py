"""`install-docker SOURCE`: put a payload in place the way an update should land.

SOURCE is a Docker static tarball (a `docker/` folder inside, as published for armhf) or a directory.
It is extracted next to docker.root (same filesystem, so the swap is two renames), validated like the
running agent validates an update, then swapped in; the previous payload stays as `<root>.previous`.
The running agent sees the change and restarts dockerd onto it (rolling back if it cannot get healthy).
"""

from __future__ import annotations

import os
import shutil
import tarfile

from . import payload as payloads


class InstallError(Exception):
    pass


def _extract(source: str, staging: str) -> None:
    try:
        with tarfile.open(source) as tar:
            for member in tar.getmembers():
                if member.name.startswith("/") or ".." in member.name.split("/"):
                    raise InstallError(f"{source}: unsafe path in archive: {member.name}")
            tar.extractall(staging, filter="tar" if hasattr(tarfile, "tar_filter") else None)
    except (tarfile.TarError, OSError) as exc:
        raise InstallError(f"{source}: not a readable tar archive ({exc})") from None


def _payload_dir(staging: str) -> str:
    """The folder holding the binaries: `docker/` in Docker's static tarballs, else the top."""
    if payloads.find(staging).get("dockerd"):
        return staging
    entries = os.listdir(staging)
    if len(entries) == 1 and os.path.isdir(os.path.join(staging, entries[0])):
        return os.path.join(staging, entries[0])
    return staging


def _own_by_root(tree: str) -> None:
    for folder, dirs, files in os.walk(tree):
        for name in [folder] + [os.path.join(folder, n) for n in dirs + files]:
            os.lchown(name, 0, 0)
            if not os.path.islink(name):
                mode = os.stat(name).st_mode & 0o7777
                os.chmod(name, mode & ~0o022)


def install_docker(source: str, root: str, allow_arch: bool = False) -> str:
    root = root.rstrip("/")
    if not os.path.exists(source):
        raise InstallError(f"{source}: no such file or directory")
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    staging = f"{root}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if os.path.isdir(source):
            shutil.copytree(source, staging, symlinks=True)
            top = staging
        else:
            os.makedirs(staging, mode=0o755)
            _extract(source, staging)
            top = _payload_dir(staging)
        # A payload is root's: whatever the tarball said, nobody else may write its binaries.
        _own_by_root(staging)
        os.chmod(staging, 0o755)
        checked = payloads.inspect(top, allow_arch=allow_arch)
        if not checked.ok:
            raise InstallError(f"{source} refused: " + "; ".join(checked.problems))
        previous = f"{root}.previous"
        if os.path.lexists(root):
            shutil.rmtree(previous, ignore_errors=True)
            os.rename(root, previous)
        os.rename(top, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    version = payloads.version(payloads.find(root).get("dockerd"))
    kept = f"; previous payload kept in {root}.previous" if os.path.exists(f"{root}.previous") else ""
    return f"installed {source} into {root} (dockerd {version or 'version unknown'}){kept}"
