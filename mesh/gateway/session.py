"""The HTTP session a gateway client talks through: its pool, its TLS and its token.

Kept apart from :mod:`mesh.gateway.client`, which decides what to send and
what the answers mean; here is only how it reaches the server.
"""

from __future__ import annotations

import logging
import ssl

import aiohttp

from mesh.config import GatewayClientConfig
from mesh.config.credentials import client_tls_context
from mesh.errors import ConfigError

__all__ = ["new_session", "tls_for"]

log = logging.getLogger(__name__)


def tls_for(url: str, config: GatewayClientConfig, label: str) -> ssl.SSLContext | None:
    """The TLS context for ``url`` (None for http://); ConfigError for a CA file it cannot use.

    A token sent over plain http is allowed (a tunnel may protect it) but logged.
    """
    if url.startswith("https://"):
        return client_tls_context(config.ca_file)
    if config.ca_file is not None:
        raise ConfigError(f"a CA file is only for an https:// URL; {label} is {url}")
    if config.token is not None:
        log.warning(
            "%s %s is plain http: its token crosses the network readable by anyone; use https://",
            label,
            url,
        )
    return None


def new_session(config: GatewayClientConfig, tls: ssl.SSLContext | None) -> aiohttp.ClientSession:
    """A session of at most ``max_in_flight`` connections that sends the token with
    every request (infer, metadata, the index and the probes alike)."""
    headers = {} if config.token is None else {"Authorization": f"Bearer {config.token}"}
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=config.max_in_flight, ssl=True if tls is None else tls
        ),
        headers=headers,
        # Each call sets its own limit with asyncio.timeout.
        timeout=aiohttp.ClientTimeout(total=None),
        raise_for_status=False,
    )
