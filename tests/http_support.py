"""Helpers for the metrics endpoint's tests: certificates made with openssl (a CA, servers and clients
it signed, a stranger signed by another CA), client TLS contexts, bcrypt hashes made with libcrypt."""

from __future__ import annotations

import base64
import os
import ssl
import subprocess
from pathlib import Path

from agent.basic_auth import _crypt, _libcrypt


def make_hash(password: str, cost: int = 4, prefix: str = "$2b$") -> str:
    salt = base64.b64encode(os.urandom(16), b"./").decode()[:22]
    setting = f"{prefix}{cost:02d}${salt}".encode()
    out = _crypt(_libcrypt(), password.encode(), setting)
    assert out is not None
    return out.decode()


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(folder: Path, name: str) -> tuple[str, str]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
            "-keyout", str(key), "-out", str(cert))
    return str(cert), str(key)


def make_leaf(folder: Path, name: str, ca: tuple[str, str], server: bool) -> tuple[str, str]:
    cert, key, csr, ext = (folder / f"{name}.pem", folder / f"{name}.key", folder / f"{name}.csr",
                           folder / f"{name}.ext")
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n" if server else "extendedKeyUsage=clientAuth\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr))
    openssl("x509", "-req", "-in", str(csr), "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial", "-days", "2",
            "-extfile", str(ext), "-out", str(cert))
    return str(cert), str(key)


def client_context(certs, client: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certs["ca.pem"])
    if client:
        context.load_cert_chain(certs[f"{client}.pem"], certs[f"{client}.key"])
    return context


def make_certs(folder: Path) -> dict[str, str]:
    """{"ca.pem", "other-ca.pem", "NAME.pem", "NAME.key"} for servers server, server2, server3 (CN and
    SAN localhost / 127.0.0.1, signed by ca) and clients client (ca) and stranger (other-ca)."""
    ca, other_ca = make_ca(folder, "ca"), make_ca(folder, "other-ca")
    out = {"ca.pem": ca[0], "other-ca.pem": other_ca[0]}
    for name, issuer, server in (("server", ca, True), ("server2", ca, True), ("server3", ca, True),
                                 ("client", ca, False), ("stranger", other_ca, False)):
        cert, key = make_leaf(folder, name, issuer, server)
        out[f"{name}.pem"], out[f"{name}.key"] = cert, key
    return out
