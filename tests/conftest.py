import shutil
import subprocess
import uuid

import pytest

from agentproc import AgentProcess
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


@pytest.fixture
def agent(base):
    """Makes real agents (`python -m agent run`) under `base`; every one is stopped afterwards, and
    no dockerd is left behind."""
    procs = []

    def make(**kw) -> AgentProcess:
        a = AgentProcess(base, **kw)
        procs.append(a)
        return a

    yield make
    for a in procs:
        a.stop()
