"""Credentials of the HTTP side: bearer-token files and TLS files, read and checked,
and the TLS contexts made of them (TLS 1.2 at least; :func:`ssl.create_default_context`
for ciphers, and for the client, certificate and host-name checks).

Part of :mod:`mesh.config.loading` (the one place that reads settings): a
token file is read once, at start, and a wrong one is a ConfigError naming
the setting, never a failure on the first request.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mesh.errors import ConfigError

__all__ = [
    "MIN_HTTP_TOKEN_CHARS",
    "client_credentials",
    "client_tls_context",
    "http_security",
    "read_http_token",
    "server_tls_context",
]


MIN_HTTP_TOKEN_CHARS = 16


def read_http_token(path: Path, key: str) -> str:
    """The bearer token stored in ``path`` (surrounding whitespace ignored).

    It goes into an HTTP header, so it must be printable ASCII without
    spaces, and long enough to resist guessing.
    """
    try:
        token = path.read_text(encoding="ascii").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: {path} must hold printable ASCII, not other bytes") from None
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    if not token or any(not ("!" <= c <= "~") for c in token):
        raise ConfigError(f"{key}: {path} must hold one token of printable ASCII without spaces")
    if len(token) < MIN_HTTP_TOKEN_CHARS:
        raise ConfigError(
            f"{key}: {path} holds {len(token)} characters; a token needs at least "
            f"{MIN_HTTP_TOKEN_CHARS} (make one with: python -c 'import secrets; "
            "print(secrets.token_hex(32))')"
        )
    return token


def _readable_file(key: str, text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_file():
        raise ConfigError(f"{key}: {path} is not a readable file")
    return path


def http_security(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The token and TLS settings of an HTTP server (a node's --http-port, the gateway)."""
    token_file = settings.get("http_token_file")
    cert, key = settings.get("tls_cert"), settings.get("tls_key")
    if (cert is None) != (key is None):
        raise ConfigError(
            "tls_cert and tls_key go together: give both (PEM certificate chain and its "
            "private key) to serve HTTPS, or neither"
        )
    return {
        "token": None
        if token_file is None
        else read_http_token(Path(token_file).expanduser(), "http_token_file"),
        **_checked_pair(cert, key),
    }


def client_credentials(settings: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The token and CA file a client uses towards ``prefix`` (``gateway`` or
    ``upstream``: the setting that holds the server's URL)."""
    token_file = settings.get(f"{prefix}_token_file")
    ca_file = settings.get(f"{prefix}_ca_file")
    url = str(settings.get(prefix, ""))
    if ca_file is not None and not url.startswith("https://"):
        raise ConfigError(f"{prefix}_ca_file is only for an https:// {prefix} URL; got {url}")
    return {
        "token": None
        if token_file is None
        else read_http_token(Path(token_file).expanduser(), f"{prefix}_token_file"),
        "ca_file": None if ca_file is None else _checked_ca(f"{prefix}_ca_file", ca_file),
    }


def _checked_pair(cert: str | None, key: str | None) -> dict[str, Path | None]:
    """The TLS files, loaded once now so that a bad one fails the start, not the first request."""
    if cert is None or key is None:
        return {"tls_cert": None, "tls_key": None}
    pair = _readable_file("tls_cert", cert), _readable_file("tls_key", key)
    server_tls_context(*pair)
    return {"tls_cert": pair[0], "tls_key": pair[1]}


def _checked_ca(key: str, text: str) -> Path:
    path = _readable_file(key, text)
    client_tls_context(path, key=key)
    return path


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side context serving ``cert`` (PEM chain) with ``key``; ConfigError if unusable."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"tls_cert {cert} and tls_key {key} cannot be used as a PEM certificate chain "
            f"and its private key: {_reason(exc)}"
        ) from None
    return context


def client_tls_context(ca_file: Path | None, *, key: str = "ca_file") -> ssl.SSLContext:
    """A client-side context that verifies the server (and its name) against
    ``ca_file``, or the system's CAs when None; ConfigError if unusable."""
    try:
        context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{key}: {ca_file} holds no usable PEM certificate: {_reason(exc)}"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        # OpenSSL names most faults (KEY_VALUES_MISMATCH, ...); a file that
        # is no PEM at all it only calls "PEM lib".
        return exc.reason or "not PEM"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)
