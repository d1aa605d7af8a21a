"""`install-docker SOURCE`: put a payload in place the way an update should land.

SOURCE is a Docker static tarball (a `docker/` folder inside, as published for armhf; plain, gzip, bzip2
or xz) or a directory. It is rebuilt next to docker.root (same filesystem, so the swap is two renames)
by `payload_tree`, which writes regular files and folders only, root-owned, with modes it chooses, and
nothing outside the staging folder; anything it cannot make safe (links, devices, FIFOs, `..`, a tar
bomb) refuses the whole SOURCE. The staged payload is validated like the running agent validates an
update, then swapped in; the previous payload stays as `<root>.previous`. Nothing of a refused SOURCE
is ever run. The running agent sees the change and restarts dockerd onto it (rolling back if it cannot
get healthy).

Stdlib only (with its imports): it runs on the .deb's Python, Debian 12's 3.11.2.
"""

from __future__ import annotations

import os

from . import payload as payloads
from . import payload_tree


class InstallError(Exception):
    pass


def _payload_dir(staging: str) -> str:
    """The folder holding the binaries: `docker/` in Docker's static tarballs, else the top."""
    if payloads.find(staging).get("dockerd"):
        return staging
    entries = os.listdir(staging)
    if len(entries) == 1 and os.path.isdir(os.path.join(staging, entries[0])):
        return os.path.join(staging, entries[0])
    return staging


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def require_root() -> None:
    if os.geteuid() != 0:
        raise InstallError("must run as root: a payload's files are made root-owned, and dockerd runs "
                           "them as root (try sudo)")


def install_docker(source: str, root: str, allow_arch: bool = False,
                   limits: payload_tree.Limits = payload_tree.LIMITS) -> str:
    require_root()
    root = os.path.abspath(root).rstrip("/")
    if not root or root == os.path.dirname(root):
        raise InstallError(f"docker.root {root or '/'}: not a folder a payload can be swapped into")
    if not os.path.lexists(source):
        raise InstallError(f"{source}: no such file or directory")
    parent = os.path.dirname(root)
    try:
        os.makedirs(parent, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise InstallError(f"cannot create {parent}: {exc.strerror}") from None
    # Checked before anything is written: in a folder others can write, they could swap the staged
    # payload between validation and the rename.
    reason = payloads.unsafe_reason(parent)
    if reason:
        raise InstallError(f"{source} refused: unsafe location for {root}: {reason}")
    staging = f"{root}.staging-{os.getpid()}"
    previous = f"{root}.previous"
    try:
        payload_tree.remove_tree(staging)
        with payload_tree.source(source, limits) as plan:
            payload_tree.materialize(plan, staging)
        top = _payload_dir(staging)
        checked = payloads.inspect(top, allow_arch=allow_arch)
        if not checked.ok:
            raise InstallError(f"{source} refused: " + "; ".join(checked.problems))
        had_root = os.path.lexists(root)
        if had_root:
            payload_tree.remove_tree(previous)
            os.rename(root, previous)
        try:
            os.rename(top, root)
        except OSError:
            if had_root:
                os.rename(previous, root)
            raise
        _fsync_dir(parent)
    except payload_tree.TreeError as exc:
        raise InstallError(f"{source} refused: {exc}") from None
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise InstallError(f"{source}: cannot install into {root}: {exc.strerror or exc}{where}") from None
    finally:
        try:
            payload_tree.remove_tree(staging)
        except OSError:
            pass
    # Only now, validated and in place, is any of it run.
    installed = payloads.inspect(root, allow_arch=allow_arch)
    version = payloads.version(installed.dockerd) if installed.ok else ""
    kept = f"; previous payload kept in {previous}" if had_root else ""
    return f"installed {source} into {root} (dockerd {version or 'version unknown'}){kept}"
