"""The test harness itself works: a real dockerd runs a real container without a network."""

import pytest

from conftest import requires_docker

pytestmark = [requires_docker, pytest.mark.dockerd]


def test_bare_dockerd_runs_busybox(bare_dockerd):
    out = bare_dockerd.docker("run", "--rm", "--network", "none", "bb:local", "echo", "hello")
    assert out.stdout.strip() == "hello"
