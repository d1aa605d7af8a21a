import shutil
import subprocess
import uuid

import pytest

from harness import Dockerd, have_docker, make_busybox_tar, new_base

requires_docker = pytest.mark.skipif(not have_docker(), reason="needs root and docker.io (dockerd)")


@pytest.fixture
def base():
    path = new_base()
    yield path
    subprocess.run(["umount", "-R", "-l", str(path)], capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def busybox_tar():
    path = new_base("img")
    tar = make_busybox_tar(path / "bb.tar")
    yield tar
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def bare_dockerd(base, busybox_tar):
    """A plain test dockerd (not supervised) with the busybox image imported as bb:local."""
    d = Dockerd(base / f"d{uuid.uuid4().hex[:6]}")
    d.base.mkdir()
    d.start()
    d.docker("import", str(busybox_tar), "bb:local")
    yield d
    d.stop()
