"""The [metrics] protection keys through the real agent (`python -m agent run`): HTTPS with a client
certificate and basic auth from agent.toml, both paths covered, a SIGHUP with a new password applied."""

from __future__ import annotations

import base64
import http.client
import signal
import socket
import ssl

import pytest

from agentproc import AgentProcess, agent_config
from conftest import requires_docker
from harness import wait_for
from http_support import client_context, make_certs, make_hash

pytestmark = [requires_docker, pytest.mark.dockerd, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str, context: ssl.SSLContext, user: str | None = None, password: str = "") -> int:
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
    headers = {}
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        conn.request("GET", path, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def write_metrics(a: AgentProcess, hashed: str) -> None:
    text = a.config_path.read_text()
    head, _, _ = text.partition("[metrics]")
    m = a.config["metrics"]
    a.config_path.write_text(head + "[metrics]\n" + "".join(f'{k} = "{v}"\n' for k, v in m.items() if isinstance(v, str))
                             + "docker_metrics = true\n" + f'basic_auth_users = {{ prometheus = "{hashed}" }}\n')


def test_tls_client_certificates_and_basic_auth_from_the_config(base, tmp_path):
    certs = make_certs(tmp_path)
    port = free_port()
    cfg = agent_config(base)
    cfg["metrics"] = {"listen": f"127.0.0.1:{port}", "docker_metrics_listen": f"127.0.0.1:{free_port()}",
                      "tls_cert": certs["server.pem"], "tls_key": certs["server.key"],
                      "tls_client_ca": certs["ca.pem"]}
    a = AgentProcess(base, config=cfg, metrics=True)
    write_metrics(a, make_hash("first"))
    a.start()
    try:
        a.wait_running()
        ours = client_context(certs, "client")
        wait_for(lambda: get(port, "/metrics", ours, "prometheus", "first") == 200, 30, 0.2, "an authorised scrape")
        wait_for(lambda: get(port, "/metrics/dockerd", ours, "prometheus", "first") == 200, 30, 0.2,
                 "dockerd's metrics through the agent")
        for path in ("/metrics", "/metrics/dockerd"):
            assert get(port, path, ours) == 401
            assert get(port, path, ours, "prometheus", "wrong") == 401
        with pytest.raises((ssl.SSLError, ConnectionError, OSError, http.client.HTTPException)):
            get(port, "/metrics", client_context(certs), "prometheus", "first")        # no client certificate

        write_metrics(a, make_hash("second"))
        a.signal(signal.SIGHUP)
        a.wait_log(r"reload: applied")
        wait_for(lambda: get(port, "/metrics", ours, "prometheus", "second") == 200, 30, 0.2, "the new password")
        assert get(port, "/metrics", ours, "prometheus", "first") == 401
    finally:
        a.stop()
