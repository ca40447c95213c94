"""A throwaway PKI for the TLS tests, made with the openssl CLI.

`make_ca(dir)` makes a self-signed CA; `ca.issue(...)` a server or client
certificate with the given subject alternative names. Keys are P-256 (fast
to make); everything is valid for two days. Used by `test_security`;
`nkeyfiles` is the NKey/JWT counterpart.
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path


def openssl(*args: str, stdin: bytes | None = None) -> bytes:
    """Run the openssl CLI; its stdout, or an error with its stderr."""
    try:
        proc = subprocess.run(
            ["openssl", *args], input=stdin, capture_output=True, timeout=30, check=False
        )
    except FileNotFoundError:
        raise RuntimeError("the security tests need the openssl CLI (Debian: openssl)") from None
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)}: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


@dataclass(frozen=True)
class Cert:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Ca:
    """A certificate authority that can issue leaf certificates."""

    cert: Path
    key: Path
    directory: Path

    def issue(
        self,
        name: str,
        *,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        client: bool = False,
    ) -> Cert:
        """A leaf certificate for `name` (CN), valid for the given names."""
        key = self.directory / f"{name}.key"
        csr = self.directory / f"{name}.csr"
        cert = self.directory / f"{name}.pem"
        ext = self.directory / f"{name}.ext"
        sans = [f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips]
        lines = [
            "basicConstraints = critical, CA:FALSE",
            "keyUsage = critical, digitalSignature, keyEncipherment",
            f"extendedKeyUsage = {'clientAuth' if client else 'serverAuth'}",
            "subjectKeyIdentifier = hash",
            "authorityKeyIdentifier = keyid",
        ]
        if sans:
            lines.append(f"subjectAltName = {', '.join(sans)}")
        ext.write_text("\n".join(lines) + "\n")
        openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}",
        )  # fmt: skip
        openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
            "-set_serial", str(secrets.randbits(63)), "-days", "2", "-sha256",
            "-extfile", str(ext), "-out", str(cert),
        )  # fmt: skip
        key.chmod(0o600)
        return Cert(cert=cert, key=key)


def make_ca(directory: Path, name: str = "test-ca") -> Ca:
    """A fresh self-signed CA in `directory` (created if needed)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / f"{name}.key"
    cert = directory / f"{name}.pem"
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-sha256",
        "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
    )  # fmt: skip
    return Ca(cert=cert, key=key, directory=directory)
