"""NKeys, JWTs and `.creds` files for the security tests, without a NATS library.

An NKey is an Ed25519 key written as base32 with a one-byte role prefix and
a CRC-16 (XMODEM) checksum; its seed is the same with the seed prefix.
openssl makes the Ed25519 keys and signatures, so the broker side of NKey
users (`authorization { users = [ { nkey: U... } ] }`) and of operator mode
(operator, account and user JWTs, a creds file) can be set up here whether
or not the client library's own `nkeys` package is installed.
`nkey_sign` signs a server nonce as a client does, to prove a pair is right.
Used by `test_security`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.certs import openssl

PREFIX_SEED = 18 << 3  # 'S'
PREFIX_OPERATOR = 14 << 3  # 'O'
PREFIX_ACCOUNT = 0  # 'A'
PREFIX_USER = 20 << 3  # 'U'
# DER framing of a raw Ed25519 private key (PKCS#8) and public key (SPKI).
_PKCS8_ED25519 = bytes.fromhex("302e020100300506032b657004220420")
_SPKI_ED25519 = bytes.fromhex("302a300506032b6570032100")


def _b32(raw: bytes) -> str:
    crc = binascii.crc_hqx(raw, 0).to_bytes(2, "little")
    return base64.b32encode(raw + crc).decode().rstrip("=")


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _sign(raw_seed: bytes, data: bytes) -> bytes:
    """Ed25519 over `data` (openssl needs files for a one-shot signature)."""
    with tempfile.TemporaryDirectory(prefix="kwd-nkey-") as tmp:
        key, message = Path(tmp) / "key.der", Path(tmp) / "data"
        key.write_bytes(_PKCS8_ED25519 + raw_seed)
        key.chmod(0o600)
        message.write_bytes(data)
        return openssl(
            "pkeyutl", "-sign", "-rawin", "-inkey", str(key), "-keyform", "DER",
            "-in", str(message),
        )  # fmt: skip


@dataclass(frozen=True)
class NKey:
    seed: str  # "SU...", "SA...", "SO...": the secret
    public: str  # "U...", "A...", "O...": what configs and JWTs name
    raw_seed: bytes

    def sign(self, data: bytes) -> bytes:
        return _sign(self.raw_seed, data)


def new_nkey(prefix: int = PREFIX_USER) -> NKey:
    """A fresh key pair of the given role, encoded as the NATS tools write it."""
    raw_seed = os.urandom(32)
    spki = openssl(
        "pkey", "-inform", "DER", "-pubout", "-outform", "DER", stdin=_PKCS8_ED25519 + raw_seed
    )
    assert spki.startswith(_SPKI_ED25519)
    assert len(spki) == len(_SPKI_ED25519) + 32
    seed_prefix = bytes([PREFIX_SEED | (prefix >> 5), (prefix & 31) << 3])
    return NKey(
        seed=_b32(seed_prefix + raw_seed),
        public=_b32(bytes([prefix]) + spki[len(_SPKI_ED25519) :]),
        raw_seed=raw_seed,
    )


def nkey_sign(key: NKey, nonce: bytes) -> str:
    """The CONNECT `sig` for a server nonce: Ed25519, base64url without padding."""
    return _b64url(key.sign(nonce))


# --- operator mode --------------------------------------------------------------------


def encode_jwt(issuer: NKey, subject: str, name: str, nats: dict[str, Any]) -> str:
    """A NATS v2 JWT: claims signed by `issuer` (alg ed25519-nkey)."""
    claims: dict[str, Any] = {
        "iat": int(time.time()),
        "iss": issuer.public,
        "name": name,
        "sub": subject,
        "nats": {**nats, "version": 2},
    }
    body = json.dumps(claims, separators=(",", ":")).encode()
    claims["jti"] = base64.b32encode(hashlib.sha256(body).digest()).decode().rstrip("=")
    header = _b64url(b'{"typ":"JWT","alg":"ed25519-nkey"}')
    payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    signature = _b64url(issuer.sign(f"{header}.{payload}".encode()))
    return f"{header}.{payload}.{signature}"


UNLIMITED_ACCOUNT = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
    # JetStream is on for an account whose storage limits are not 0.
    "mem_storage": -1,
    "disk_storage": -1,
    "streams": -1,
    "consumer": -1,
}


@dataclass(frozen=True)
class Operator:
    """An operator, its system account, one JetStream-enabled account and one
    user of it."""

    operator_jwt: str
    system: NKey
    system_jwt: str
    account: NKey
    account_jwt: str
    user: NKey
    user_jwt: str

    def server_conf(self, directory: Path) -> str:
        """The nats-server config block: trust the operator, preload the account."""
        path = directory / "operator.jwt"
        path.write_text(self.operator_jwt)
        return (
            f'operator: "{path}"\n'
            f'system_account: "{self.system.public}"\n'
            "resolver: MEMORY\n"
            "resolver_preload: {\n"
            f'  {self.system.public}: "{self.system_jwt}"\n'
            f'  {self.account.public}: "{self.account_jwt}"\n'
            "}\n"
        )

    def creds(self) -> str:
        """A `.creds` file as `nsc generate creds` writes it."""
        return (
            "-----BEGIN NATS USER JWT-----\n"
            f"{self.user_jwt}\n"
            "------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n"
            "NKEYs are sensitive and should be treated as secrets.\n\n"
            "-----BEGIN USER NKEY SEED-----\n"
            f"{self.user.seed}\n"
            "------END USER NKEY SEED------\n\n"
            "*************************************************************\n"
        )


def new_operator() -> Operator:
    """Operator -> account -> user, each JWT signed by the one above."""
    operator = new_nkey(PREFIX_OPERATOR)
    system = new_nkey(PREFIX_ACCOUNT)
    account = new_nkey(PREFIX_ACCOUNT)
    user = new_nkey(PREFIX_USER)
    operator_jwt = encode_jwt(
        operator,
        operator.public,
        "test-operator",
        {"type": "operator", "system_account": system.public},
    )
    system_jwt = encode_jwt(operator, system.public, "SYS", {"type": "account"})
    account_jwt = encode_jwt(
        operator, account.public, "KANADE", {"type": "account", "limits": UNLIMITED_ACCOUNT}
    )
    user_claims: dict[str, Any] = {"type": "user", "subs": -1, "data": -1, "payload": -1}
    user_jwt = encode_jwt(account, user.public, "kanade-watchdog", user_claims)
    return Operator(operator_jwt, system, system_jwt, account, account_jwt, user, user_jwt)
