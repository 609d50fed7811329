"""Credentials for tests: a self-signed certificate for 127.0.0.1, and token files.

Made with ``cryptography`` in the test's own directory; nothing is fetched.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["Certificate", "self_signed", "token_file"]


@dataclass(frozen=True)
class Certificate:
    """A PEM certificate (its own CA) and its private key, as files."""

    cert: Path
    key: Path


def self_signed(
    directory: Path, name: str = "edgemesh-test", ips: tuple[str, ...] = ("127.0.0.1",)
) -> Certificate:
    """A certificate for ``ips`` and localhost, valid for a day, that signs itself."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips),
                    x509.DNSName("localhost"),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / f"{name}.crt"
    key_path = directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return Certificate(cert_path, key_path)


def token_file(directory: Path, name: str = "token") -> tuple[str, Path]:
    """A fresh random token and the file holding it."""
    token = secrets.token_hex(32)
    path = directory / name
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token, path
