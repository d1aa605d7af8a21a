"""The metrics endpoint as the network sees it: hundreds of slow clients (silent, slowloris, half a
request, a head just under the limit, stalled TLS handshakes) are cut at the whole-request deadline while normal scrapes go on, the
connection cap evicts the oldest incomplete connection, bounded threads; basic auth with bcrypt hashes
(known-answer vectors, cache, 401s); client certificates; TLS files renewed at the same path; the size
limit of /metrics/dockerd. Real sockets, real TLS (certificates made here with openssl), no mocks."""

from __future__ import annotations

import base64
import http.client
import http.server
import logging
import os
import resource
import socket
import ssl
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.basic_auth import BasicAuth, verify_password
from agent.container_events import ContainerEventCounter
from agent.http_server import (AUTH_MAX_PENDING, DOCKERD_MAX_BYTES, DOCKERD_MAX_PENDING, DOCKERD_TIMEOUT_SECONDS,
                               DOCKERD_WORKERS, MetricsServer)
from agent.metrics import AgentCollector, ShimMetrics
from http_support import client_context, make_certs, make_hash
from metrics_support import REPO, realistic_snapshot, samples, value

sys.path.insert(0, str(REPO))
from bench.slow_clients import MODES, SlowClients  # noqa: E402

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def enough_fds():
    # 500 clients and the server's 500 ends live in this one process.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 8192)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def registry():
    registry = CollectorRegistry()
    AgentCollector(lambda: realistic_snapshot(time.time()), registry)
    ShimMetrics(registry)
    ContainerEventCounter(lambda: None, time.time, registry)
    return registry


@pytest.fixture
def serve(registry):
    servers = []

    def make(**kw) -> MetricsServer:
        dockerd = kw.pop("dockerd", lambda: None)
        server = MetricsServer("127.0.0.1", 0, registry, kw.pop("cert", ""), kw.pop("key", ""), dockerd, **kw)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def get(server: MetricsServer, path: str = "/metrics", headers: dict | None = None,
        context: ssl.SSLContext | None = None, method: str = "GET", timeout: float = 5.0):
    """(status, headers, body) of one request on a new connection; `timeout` is the generous bound a
    scrape must meet (Prometheus' default scrape_timeout is 10 s)."""
    host, port = server.address
    if server.url.startswith("https:"):
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def closed_by_peer(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(65536) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# -- slow clients ---------------------------------------------------------------------------------

def test_500_slow_clients_are_cut_at_the_deadline_while_scrapes_go_on(serve):
    """Shipped defaults (10 s for the whole request). A slowloris that sends a byte every 9 s would live
    forever under a per-read timeout of 10 s; here it, the silent clients, the half requests and the
    8000-byte heads are all cut at 10 s, every scrape meanwhile succeeds within 5 s, and the server runs
    no extra thread per client."""
    server = serve()
    assert server.max_connections >= 501
    threads_before = threading.active_count()
    started = time.monotonic()
    slow = SlowClients(server.address, 500, dribble_seconds=9.0).start()
    scrapes = []
    try:
        wait_until(lambda: server.open_connections() >= 500, 8, "500 slow clients connected")
        most_threads = 0
        while time.monotonic() - started < 8.5:      # all 500 stay connected this long (deadline: 10 s)
            status, _, body = get(server)
            assert status == 200 and value(samples(body.decode()), "armhf_agent_dockerd_up") == 1
            scrapes.append(time.monotonic())
            most_threads = max(most_threads, threading.active_count())
            time.sleep(0.25)
        assert slow.connected() == 500 and not slow.lifetimes(), "slow clients were cut before the deadline"
        wait_until(lambda: len(slow.lifetimes()) == 500, 6, "every slow client cut")
    finally:
        slow.stop()
    # One for the load generator's own thread; the server adds none for 500 clients.
    assert most_threads <= threads_before + 1, f"{most_threads - threads_before - 1} server threads for the clients"
    assert len(scrapes) >= 15
    lifetimes = slow.lifetimes()
    assert {c.mode for c in lifetimes} == set(MODES)
    assert all(9.9 <= c.lifetime <= 13 for c in lifetimes), sorted(c.lifetime for c in lifetimes)[::50]
    assert server.open_connections() == 0
    assert get(server)[0] == 200


def test_a_client_that_sends_nothing_or_stalls_tls_is_cut(serve, certs):
    server = serve(cert=certs["server.pem"], key=certs["server.key"], request_timeout=1.5)
    context = ssl.create_default_context(cafile=certs["ca.pem"])
    t0 = time.monotonic()
    silent = socket.create_connection(server.address)               # no ClientHello at all
    partial = socket.create_connection(server.address)
    partial.sendall(bytes([0x16, 0x03, 0x01, 0x02, 0x00]))           # a TLS record header, no body
    after_handshake = context.wrap_socket(socket.create_connection(server.address), server_hostname="localhost")
    try:
        # Meanwhile a real scrape is served.
        assert get(server, context=context)[0] == 200
        for sock in (silent, partial, after_handshake):
            wait_until(lambda: _gone(sock), 5, "the stalled client cut")
        took = time.monotonic() - t0
        assert 1.4 <= took <= 5, took
    finally:
        for sock in (silent, partial, after_handshake):
            sock.close()


def _gone(sock) -> bool:
    if isinstance(sock, ssl.SSLSocket):
        sock.settimeout(0.05)
        try:
            return sock.recv(1) == b""
        except (socket.timeout, ssl.SSLWantReadError):
            return False
        except (OSError, ssl.SSLError):
            return True
    return closed_by_peer(sock)


def test_at_the_cap_the_oldest_connection_without_a_request_is_evicted(serve):
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    server = serve(max_connections=16, request_timeout=30, dockerd=lambda: "127.0.0.1:%d" % hung.getsockname()[1])
    answer = {}
    # A complete request that waits on a hung dockerd: oldest of all, but not evictable.
    proxied = threading.Thread(target=lambda: answer.update(r=get(server, "/metrics/dockerd")))
    proxied.start()
    wait_until(lambda: server.open_connections() == 1, 5, "the proxied request accepted")
    silent = [socket.create_connection(server.address) for _ in range(15 + 5)]   # 5 over the cap
    try:
        wait_until(lambda: sum(closed_by_peer(s) for s in silent[:5]) == 5, 5, "the 5 oldest evicted")
        assert server.open_connections() == 16
        assert not any(closed_by_peer(s) for s in silent[5:]), "a newer connection was evicted"
        # A scrape gets in, at the cost of the next oldest silent client.
        status, _, body = get(server)
        assert status == 200 and b"armhf_agent_dockerd_up" in body
        assert closed_by_peer(silent[5]) and not any(closed_by_peer(s) for s in silent[6:])
        proxied.join(DOCKERD_TIMEOUT_SECONDS + 5)
        status, _, body = answer["r"]
        assert status == 503 and b"timed out" in body, body
    finally:
        for s in silent:
            s.close()
        hung.close()


def test_request_head_limit_and_malformed_requests(serve):
    server = serve(max_header_bytes=8192)
    # Just under the limit: served.
    assert get(server, headers={"X-Pad": "a" * 7000})[0] == 200
    # Over it, never ending: 431, and the server stops reading.
    with socket.create_connection(server.address, timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 9000)
        reply = s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 431 "), reply[:80]
    for raw, status in ((b"NONSENSE\r\n\r\n", 400), (b"GET metrics HTTP/1.1\r\n\r\n", 400),
                        (b"GET /metrics\r\n\r\n", 400), (b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n", 400),
                        (b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", 405)):
        with socket.create_connection(server.address, timeout=5) as s:
            s.sendall(raw)
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 %d " % status), (raw, reply[:80])
    status, headers, body = get(server, method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 1000


# -- /metrics/dockerd ------------------------------------------------------------------------------

class _FakeDockerdMetrics(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("size, status", [(DOCKERD_MAX_BYTES - 1, 200), (DOCKERD_MAX_BYTES + 1, 502)])
def test_dockerd_metrics_are_served_up_to_the_size_limit(serve, size, status):
    handler = type("H", (_FakeDockerdMetrics,), {"body": b"# a\n" * (size // 4) + b"x" * (size % 4)})
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        server = serve(dockerd=lambda: "127.0.0.1:%d" % upstream.server_address[1])
        got, _, body = get(server, "/metrics/dockerd", timeout=10)
        assert got == status
        if status == 200:
            assert body == handler.body
        else:
            assert b"larger than %d bytes" % DOCKERD_MAX_BYTES in body
    finally:
        upstream.shutdown()
        upstream.server_close()


def test_requests_to_a_hung_dockerd_are_bounded_and_metrics_stay_fast(serve):
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(16)
    server = serve(dockerd=lambda: "127.0.0.1:%d" % hung.getsockname()[1])
    threads_before = threading.active_count()
    results = []
    lock = threading.Lock()

    def proxied():
        got = get(server, "/metrics/dockerd", timeout=10)
        with lock:
            results.append(got)

    clients = [threading.Thread(target=proxied) for _ in range(DOCKERD_MAX_PENDING + 3)]
    try:
        for t in clients:
            t.start()
        wait_until(lambda: len(results) >= 3, 5, "the requests over the limit refused at once")
        assert get(server)[0] == 200                       # /metrics is not queued behind dockerd
        for t in clients:
            t.join(4 * DOCKERD_TIMEOUT_SECONDS + 5)
        bodies = sorted(body for status, _, body in results if status == 503)
        assert len(bodies) == len(clients), results
        assert sum(b"already in progress" in b for b in bodies) == 3
        assert sum(b"timed out" in b for b in bodies) == DOCKERD_MAX_PENDING
        # The test's own client threads, plus at most the server's pool: no thread per request.
        assert threading.active_count() <= threads_before + len(clients) + DOCKERD_WORKERS
    finally:
        hung.close()


# -- basic auth -------------------------------------------------------------------------------------

# Openwall crypt_blowfish's test vectors (wrapper.c), the reference bcrypt's own: an oracle independent
# of libxcrypt. The last one shows bcrypt's 72-byte limit.
VECTORS = [
    ("U*U", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"),
    ("U*U*", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.VGOzA784oUp/Z0DY336zx7pLYAy0lwK"),
    ("U*U*U", "$2a$05$XXXXXXXXXXXXXXXXXXXXXOAcXxm9kjPGEMsLznoKqmqw7tc8WCx4a"),
    ("", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.7uG0VCzI2bS7j6ymqJi9CdcdxiRTWNy"),
    ("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789chars after 72 are ignored",
     "$2a$05$abcdefghijklmnopqrstuu5s2v8.iXieOjg/.AySBTTZIIVFJeBui"),
]


@pytest.mark.parametrize("password, hashed", VECTORS)
def test_bcrypt_known_answers(password, hashed):
    secret = password.encode()
    assert verify_password(secret, hashed)
    # $2b$ and $2y$ differ from $2a$ only for 8-bit passwords and lengths over 255: same hash here.
    for prefix in ("$2b$", "$2y$"):
        assert verify_password(secret, prefix + hashed[4:])
    if len(secret) > 72:
        assert verify_password(secret[:72] + b"another tail", hashed)
    else:
        assert not verify_password(secret + b"!", hashed)
    assert not verify_password(secret + b"\0tail", hashed)        # a C string would cut it at the NUL
    assert not verify_password(b"U*V", hashed)
    assert not verify_password(b"x" * 600, hashed)                 # beyond libcrypt's passphrase limit


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth_refuses_without_the_right_credentials(serve):
    server = serve(basic_auth_users={"prometheus": VECTORS[0][1], "other": make_hash("pw2", prefix="$2y$")})
    wrong = [{}, basic("prometheus", "U*V"), basic("prometheus", ""), basic("nobody", "U*U"), basic("other", "U*U"),
             basic("Prometheus", "U*U"), {"Authorization": "Basic !!!notbase64"},
             {"Authorization": "Basic " + base64.b64encode(b"prometheusU*U").decode()},
             {"Authorization": "Basic " + base64.b64encode(b"prometheus:U*U\0").decode()},
             {"Authorization": "Bearer U*U"}]
    for headers in wrong:
        for path in ("/metrics", "/metrics/dockerd", "/nope"):
            status, reply_headers, body = get(server, path, headers=headers)
            assert status == 401, (headers, path, status)
            assert reply_headers["WWW-Authenticate"].startswith("Basic ")
            assert b"armhf_agent" not in body and b"dockerd" not in body
    status, _, body = get(server, headers=basic("prometheus", "U*U"))
    assert status == 200 and value(samples(body.decode()), "armhf_agent_dockerd_up") == 1
    assert get(server, headers=basic("other", "pw2"))[0] == 200
    assert get(server, "/metrics/dockerd", headers=basic("prometheus", "U*U"))[0] == 503     # dockerd down
    assert get(server, "/nope", headers=basic("prometheus", "U*U"))[0] == 404


def test_a_verified_password_is_not_hashed_again_and_the_cache_is_bounded(serve):
    server = serve(basic_auth_users={"prometheus": make_hash("secret", cost=10)})
    auth: BasicAuth = server.auth
    for _ in range(6):
        assert get(server, headers=basic("prometheus", "secret"))[0] == 200
    assert auth.verifications == 1
    # Failures are never cached; an unknown user costs a bcrypt as a known one does.
    for headers in (basic("prometheus", "nope"), basic("prometheus", "nope"), basic("ghost", "secret")):
        assert get(server, headers=headers)[0] == 401
    assert auth.verifications == 4 and auth.cache_size() == 1

    users = {f"u{i}": make_hash(f"p{i}") for i in range(40)}
    many = BasicAuth(users)
    for i in range(40):
        assert many.check_cached(f"u{i}".encode(), f"p{i}".encode()) is None
        assert many.verify(f"u{i}".encode(), f"p{i}".encode())
    assert many.cache_size() == 16
    assert many.check_cached(b"u39", b"p39") and many.check_cached(b"u0", b"p0") is None
    assert many.check_cached(b"u39", b"p38") is None


def test_a_flood_of_wrong_passwords_is_bounded_and_cached_credentials_still_get_in(serve):
    # Cost 13 (~0.35 s here): each wrong password keeps the one bcrypt worker busy a while. A long
    # request deadline: on a loaded machine the 8 queued guesses may take longer than the default 10 s.
    server = serve(basic_auth_users={"prometheus": make_hash("right", cost=13)}, request_timeout=120)
    assert get(server, headers=basic("prometheus", "right"), timeout=30)[0] == 200     # now cached
    results = []
    lock = threading.Lock()

    def guess(i):
        got = get(server, headers=basic("prometheus", f"guess{i}"), timeout=120)[0]
        with lock:
            results.append(got)

    flood = [threading.Thread(target=guess, args=(i,)) for i in range(AUTH_MAX_PENDING + 6)]
    for t in flood:
        t.start()
    wait_until(lambda: results.count(503) >= 6 - 1, 10, "guesses over the limit refused at once")
    # Prometheus' cached credentials do not wait behind the guesses.
    assert get(server, headers=basic("prometheus", "right"))[0] == 200
    for t in flood:
        t.join(150)
    assert sorted(set(results)) == [401, 503] and results.count(401) + results.count(503) == len(flood), results
    assert results.count(401) >= AUTH_MAX_PENDING - 1


def run_cli(*args, config: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", "--config", str(config), *args], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})), capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("hashed, message", [
    ("$2b$12$tooshort", "must be a bcrypt hash"),
    ("$1$abcdefgh$0123456789012345678901", "must be a bcrypt hash"),
    ("plaintext-password", "must be a bcrypt hash"),
    ("$2b$03$" + "a" * 53, "must be a bcrypt hash"),                  # cost below 4
])
def test_check_config_refuses_a_malformed_hash_naming_the_key(tmp_path, hashed, message):
    config = tmp_path / "agent.toml"
    config.write_text(f'[metrics]\nbasic_auth_users = {{ prometheus = "{hashed}" }}\n')
    out = run_cli("check-config", config=config)
    assert out.returncode == 78, out
    assert f"{config}:2: metrics.basic_auth_users.prometheus: {message}" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert hashed[8:] not in out.stderr or len(hashed) < 12          # the hash is not echoed whole


def test_check_config_user_names_env_and_effective(tmp_path):
    config = tmp_path / "agent.toml"
    good = make_hash("pw", prefix="$2y$")
    config.write_text(f'[metrics]\nbasic_auth_users = {{ "a:b" = "{good}" }}\n')
    out = run_cli("check-config", config=config)
    assert out.returncode == 78 and "metrics.basic_auth_users: user name 'a:b'" in out.stderr, out.stderr
    config.write_text('[metrics]\ntls_client_ca = "/ca.pem"\n')
    out = run_cli("check-config", config=config)
    assert out.returncode == 78 and "tls_client_ca needs tls_cert and tls_key" in out.stderr, out.stderr
    config.write_text("")
    out = run_cli("check-config", config=config, env={"ARMHF_AGENT_METRICS__BASIC_AUTH_USERS": "[1,2"})
    assert out.returncode == 78 and "env ARMHF_AGENT_METRICS__BASIC_AUTH_USERS" in out.stderr, out.stderr
    config.write_text(f'[metrics]\nbasic_auth_users = {{ prometheus = "{good}" }}\n')
    out = run_cli("check-config", "--effective", config=config)
    assert out.returncode == 0, out.stderr
    assert tomllib.loads(out.stdout)["metrics"]["basic_auth_users"] == {"prometheus": good}


# -- TLS: client certificates and renewal ------------------------------------------------------------

@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


def refused(server, context) -> bool:
    try:
        status = get(server, context=context)[0]
    except (ssl.SSLError, ConnectionError, OSError, http.client.HTTPException):
        return True
    return status != 200


def install(src: str, dst: Path) -> None:
    """As a renewal tool does: write next to it, rename over."""
    tmp = dst.with_name(dst.name + ".new")
    tmp.write_bytes(Path(src).read_bytes())
    os.rename(tmp, dst)


def test_client_certificates_are_required_and_the_ca_is_reloaded(serve, certs, tmp_path):
    ca_file = tmp_path / "clients-ca.pem"
    install(certs["ca.pem"], ca_file)
    server = serve(cert=certs["server.pem"], key=certs["server.key"], tls_client_ca=str(ca_file))
    assert get(server, context=client_context(certs, "client"))[0] == 200
    assert refused(server, client_context(certs))                        # no client certificate
    assert refused(server, client_context(certs, "stranger"))            # signed by another CA
    # The CA file is replaced (as a renewal would): the other CA's clients get in, ours no longer.
    install(certs["other-ca.pem"], ca_file)
    wait_until(lambda: not refused(server, client_context(certs, "stranger")), 10, "the new client CA in force",
               interval=0.2)
    assert refused(server, client_context(certs, "client"))


def served_certificate(server) -> bytes:
    context = ssl.create_default_context(cafile=None)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(server.address, timeout=5) as raw:
        with context.wrap_socket(raw) as tls:
            return tls.getpeercert(binary_form=True)


def der(pem_path: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(Path(pem_path).read_text())


def test_a_renewed_certificate_is_served_and_a_broken_renewal_keeps_the_old_one(serve, certs, tmp_path, caplog):
    cert, key = tmp_path / "tls.pem", tmp_path / "tls.key"
    install(certs["server.pem"], cert)
    install(certs["server.key"], key)
    server = serve(cert=str(cert), key=str(key))
    address = server.address
    assert served_certificate(server) == der(certs["server.pem"])
    # A connection set up before the renewal, its request sent after: still answered.
    early = client_context(certs).wrap_socket(socket.create_connection(address, timeout=5), server_hostname="localhost")

    install(certs["server2.key"], key)
    install(certs["server2.pem"], cert)
    wait_until(lambda: served_certificate(server) == der(certs["server2.pem"]), 10, "the renewed certificate",
               interval=0.2)
    early.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert early.recv(64).startswith(b"HTTP/1.1 200 ")
    early.close()
    assert server.address == address

    # Broken: the new certificate with a key that does not match it. The old context stays, said once.
    caplog.set_level(logging.WARNING, logger="agent.http_server")
    install(certs["server3.pem"], cert)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert served_certificate(server) == der(certs["server2.pem"])
        assert get(server, context=client_context(certs))[0] == 200
        time.sleep(0.1)
    broken = [r for r in caplog.records if "cannot load the changed TLS files" in r.getMessage()]
    assert len(broken) == 1, [r.getMessage() for r in caplog.records]
    # Unreadable is broken too (the key's folder replaced by nothing for a moment).
    os.unlink(key)
    time.sleep(1.5)
    assert served_certificate(server) == der(certs["server2.pem"])
    # Fixed: the matching key arrives.
    install(certs["server3.key"], key)
    wait_until(lambda: served_certificate(server) == der(certs["server3.pem"]), 10, "the repaired renewal",
               interval=0.2)
