"""HTTP basic auth against bcrypt hashes, as Prometheus' exporter-toolkit does (`basic_auth_users`).

bcrypt is verified by the system's libcrypt (libxcrypt, `libcrypt.so.1`) through ctypes: no PyPI
dependency, and Python's `crypt` module is deprecated and gone in 3.13 (Debian 13). On Debian 12 and 13
libcrypt1 is always installed: it is `Protected: yes` and pre-depended on by the Essential perl-base
(checked with `dpkg -s libcrypt1 perl-base` on Debian 12). libxcrypt verifies `$2a$`, `$2b$` and `$2y$`.

bcrypt is slow by design (cost 12: ~180 ms of CPU here), so a scrape every 15 s must not pay it each
time: successful verifications are cached, keyed on an HMAC of user and password under a key drawn at
start. The cache never holds the password, nor a fast unsalted hash of it that could be brute-forced
from a memory dump.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import hashlib
import hmac
import os
import re
import threading
from collections import OrderedDict

# libxcrypt's <crypt.h>: sizeof(struct crypt_data) = 384 + 384 + 512 + 767 + 1 + 30720.
_CRYPT_DATA_SIZE = 32768
# CRYPT_MAX_PASSPHRASE_SIZE: a longer passphrase makes crypt_rn fail.
MAX_PASSWORD_BYTES = 512
_CRYPT_SALT_OK = 0
BCRYPT_HASH = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
CACHE_ENTRIES = 16
# Openwall crypt_blowfish's own test vector: proves at start that this libcrypt computes bcrypt right.
_VECTOR = (b"U*U", b"$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW")

_lib = None
_lib_lock = threading.Lock()


class BcryptUnavailable(OSError):
    """An OSError, so a server that cannot verify passwords is "cannot serve" (logged, retried), not a crash."""


def _libcrypt():
    global _lib
    with _lib_lock:
        if _lib is None:
            try:
                lib = ctypes.CDLL("libcrypt.so.1")
            except OSError as exc:
                raise BcryptUnavailable(f"cannot load libcrypt.so.1 (package libcrypt1): {exc}") from None
            lib.crypt_rn.restype = ctypes.c_char_p
            lib.crypt_rn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
            lib.crypt_checksalt.restype = ctypes.c_int
            lib.crypt_checksalt.argtypes = [ctypes.c_char_p]
            if _crypt(lib, *_VECTOR) != _VECTOR[1]:
                raise BcryptUnavailable("this libcrypt does not compute bcrypt ($2a$/$2b$/$2y$) hashes")
            _lib = lib
        return _lib


def _crypt(lib, password: bytes, setting: bytes) -> bytes | None:
    # A fresh, zeroed crypt_data per call: crypt_rn is then safe from any thread. ctypes drops the GIL
    # for the call, so a verification in a worker does not stall the event loop.
    data = ctypes.create_string_buffer(_CRYPT_DATA_SIZE)
    return lib.crypt_rn(password, setting, data, _CRYPT_DATA_SIZE)


def check_hash(value: str) -> str:
    """Raises ValueError (for the config's error message) unless `value` is a bcrypt hash this host's
    libcrypt verifies."""
    if not BCRYPT_HASH.match(value):
        raise ValueError("must be a bcrypt hash ($2b$, $2y$ or $2a$, cost 04-31, 60 characters; make one with "
                         f"`htpasswd -nBC 12 USER` or `mkpasswd -m bcrypt -R 12`), got {value[:7]!r}...")
    try:
        lib = _libcrypt()
    except BcryptUnavailable as exc:
        raise ValueError(str(exc)) from None
    if lib.crypt_checksalt(value.encode()) != _CRYPT_SALT_OK:
        raise ValueError(f"libcrypt refuses this hash's salt ({value[:7]}...)")
    return value


def verify_password(password: bytes, hashed: str) -> bool:
    """bcrypt verification; False for anything libcrypt cannot take (NUL bytes: C strings would cut the
    password short, so "right\\0anything" must not pass as "right")."""
    if b"\0" in password or len(password) > MAX_PASSWORD_BYTES:
        return False
    computed = _crypt(_libcrypt(), password, hashed.encode())
    return computed is not None and hmac.compare_digest(computed, hashed.encode())


def parse_basic(header: str | None) -> tuple[bytes, bytes] | None:
    """(user, password) of an `Authorization: Basic ...` header, None when absent or malformed."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    return (user, password) if sep else None


class BasicAuth:
    """`users`: {name: bcrypt hash}. `check_cached` is cheap (the event loop calls it); `verify` costs
    a bcrypt and runs in a worker."""

    def __init__(self, users: dict[str, str]):
        if not users:
            raise ValueError("no users")
        _libcrypt()
        self._users = {name.encode(): hashed for name, hashed in users.items()}
        # An unknown user costs a bcrypt too (against some real hash, then refused): the time of a
        # 401 must not tell which user names exist.
        self._decoy = next(iter(self._users.values()))
        self._key = os.urandom(32)
        self._cache: OrderedDict[bytes, str] = OrderedDict()
        self._lock = threading.Lock()
        self.verifications = 0          # bcrypt computations done (tests read it)

    def _cache_key(self, user: bytes, password: bytes) -> bytes:
        return hmac.new(self._key, len(user).to_bytes(4, "big") + user + password, hashlib.sha256).digest()

    def check_cached(self, user: bytes, password: bytes) -> bool | None:
        """True: verified before with the hash still configured. None: unknown, a bcrypt is needed."""
        key = self._cache_key(user, password)
        with self._lock:
            hashed = self._cache.get(key)
            if hashed is None:
                return None
            self._cache.move_to_end(key)
        return hmac.compare_digest(hashed.encode(), self._users.get(user, "").encode()) or None

    def verify(self, user: bytes, password: bytes) -> bool:
        hashed = self._users.get(user)
        with self._lock:
            self.verifications += 1
        ok = verify_password(password, hashed if hashed is not None else self._decoy) and hashed is not None
        if ok:
            key = self._cache_key(user, password)
            with self._lock:
                self._cache[key] = hashed
                self._cache.move_to_end(key)
                while len(self._cache) > CACHE_ENTRIES:
                    self._cache.popitem(last=False)
        return ok

    def cache_size(self) -> int:
        with self._lock:
            return len(self._cache)
