"""The mesh-key handshake: HMAC-SHA256 challenge/response with fresh nonces both ways.

Both sides hold the same secret key. Over two ``hello`` calls each side
proves it knows the key without sending it, and neither proof can be
replayed because each binds the other side's fresh nonce::

    client                                     server
    hello({"nonce": Nc})              ───►
                                      ◄───     {"auth": "hmac-sha256", "nonce": Ns,
                                                "proof": HMAC(K, "server" | Nc | Ns), ...}
    check the server's proof
    hello({"proof": HMAC(K, "client" | Ns | Nc)})  ───►
                                      ◄───     {"auth": "ok"}   (or AuthError, then close)

The two proofs use different labels so that one can never stand in for the
other. The key authenticates peers; it does not encrypt the traffic.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from enum import Enum

from mesh.errors import AuthError, BadRequest

__all__ = [
    "MAX_NONCE_BYTES",
    "MIN_NONCE_BYTES",
    "NONCE_BYTES",
    "HandshakeState",
    "ServerHandshake",
    "check_nonce",
    "client_proof",
    "mesh_id",
    "server_proof",
    "verify_server_proof",
]

NONCE_BYTES = 32
MIN_NONCE_BYTES = 16
MAX_NONCE_BYTES = 64
_SERVER_LABEL = b"edgemesh/hello/server\x00"
_CLIENT_LABEL = b"edgemesh/hello/client\x00"
_MESH_ID_LABEL = b"edgemesh/mesh-id\x00"


def mesh_id(key: bytes | None) -> str:
    """A public name for the mesh a key defines: a hash of the key, never the key.

    Nodes advertise it so that members of different meshes can tell each
    other apart before they try to authenticate. An open mesh is ``"open"``.
    """
    if key is None:
        return "open"
    return hashlib.sha256(_MESH_ID_LABEL + key).hexdigest()[:16]


def server_proof(key: bytes, client_nonce: bytes, server_nonce: bytes) -> bytes:
    """What the server sends to prove it holds ``key``."""
    return hmac.new(key, _SERVER_LABEL + client_nonce + server_nonce, hashlib.sha256).digest()


def client_proof(key: bytes, client_nonce: bytes, server_nonce: bytes) -> bytes:
    """What the client sends to prove it holds ``key``."""
    return hmac.new(key, _CLIENT_LABEL + server_nonce + client_nonce, hashlib.sha256).digest()


def verify_server_proof(
    key: bytes, client_nonce: bytes, server_nonce: bytes, proof: object
) -> None:
    """Raise AuthError unless ``proof`` is the server's proof for these nonces."""
    if not isinstance(proof, bytes) or not hmac.compare_digest(
        proof, server_proof(key, client_nonce, server_nonce)
    ):
        raise AuthError("the node could not prove it holds our mesh key (wrong key?)")


def check_nonce(nonce: object) -> bytes:
    """A peer's nonce, checked for type and length."""
    if not isinstance(nonce, bytes) or not MIN_NONCE_BYTES <= len(nonce) <= MAX_NONCE_BYTES:
        raise BadRequest(
            f"hello: nonce must be {MIN_NONCE_BYTES}..{MAX_NONCE_BYTES} bytes of binary"
        )
    return nonce


class HandshakeState(Enum):
    """Where a server-side connection is in the handshake."""

    AWAITING_NONCE = "awaiting-nonce"
    AWAITING_PROOF = "awaiting-proof"
    AUTHENTICATED = "authenticated"


@dataclass
class ServerHandshake:
    """The server side of one connection's handshake.

    ``key`` None means an open node: every connection counts as
    authenticated from the start, and ``hello`` only reports that.
    ``server_nonce`` must be fresh random bytes for every connection.
    """

    key: bytes | None
    server_nonce: bytes
    state: HandshakeState = field(init=False)
    _client_nonce: bytes = field(init=False, default=b"")

    def __post_init__(self) -> None:
        self.state = (
            HandshakeState.AUTHENTICATED if self.key is None else HandshakeState.AWAITING_NONCE
        )

    @property
    def authenticated(self) -> bool:
        """Whether calls other than ``hello`` are allowed on this connection."""
        return self.state is HandshakeState.AUTHENTICATED

    def hello(self, params: list[object]) -> dict[str, object]:
        """Handle one ``hello`` call; returns the auth part of its result.

        Raises AuthError for a wrong proof (the edge then closes the
        connection) and BadRequest for a malformed call.
        """
        if len(params) != 1 or not isinstance(params[0], dict):
            raise BadRequest("hello takes one map: {nonce} first, then {proof}")
        args = params[0]
        if self.key is None:
            return {"auth": "none"}
        if "proof" in args:
            if self.state is not HandshakeState.AWAITING_PROOF:
                raise AuthError("hello: proof sent before the nonce exchange")
            proof = args["proof"]
            expected = client_proof(self.key, self._client_nonce, self.server_nonce)
            if not isinstance(proof, bytes) or not hmac.compare_digest(proof, expected):
                raise AuthError("mesh key mismatch: the client's proof is wrong")
            self.state = HandshakeState.AUTHENTICATED
            return {"auth": "ok"}
        if self.state is HandshakeState.AUTHENTICATED:
            return {"auth": "ok"}
        self._client_nonce = check_nonce(args.get("nonce"))
        self.state = HandshakeState.AWAITING_PROOF
        return {
            "auth": "hmac-sha256",
            "nonce": self.server_nonce,
            "proof": server_proof(self.key, self._client_nonce, self.server_nonce),
        }
