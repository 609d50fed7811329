"""Credentials of the HTTP side: bearer-token files and TLS files, read and checked.

Part of :mod:`mesh.config.loading` (the one place that reads settings): a
token file is read once, at start, and a wrong one is a ConfigError naming
the setting, never a failure on the first request.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mesh.errors import ConfigError

__all__ = ["MIN_HTTP_TOKEN_CHARS", "client_credentials", "http_security", "read_http_token"]


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
        "tls_cert": None if cert is None else _readable_file("tls_cert", cert),
        "tls_key": None if key is None else _readable_file("tls_key", key),
    }


def client_credentials(settings: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The token and CA file a client sends to ``prefix`` (the gateway, the upstream)."""
    token_file = settings.get(f"{prefix}_token_file")
    ca_file = settings.get(f"{prefix}_ca_file")
    return {
        "token": None
        if token_file is None
        else read_http_token(Path(token_file).expanduser(), f"{prefix}_token_file"),
        "ca_file": None if ca_file is None else _readable_file(f"{prefix}_ca_file", ca_file),
    }
