"""The mesh-key handshake: HMAC-SHA256 challenge/response with fresh nonces both ways,
the caller's role (node or client), and the choice of sealing.

Both sides hold the same secret key. Over two ``hello`` calls each side
proves it knows the key without sending it, and neither proof can be
replayed because each binds the other side's fresh nonce::

    client                                     server
    hello({"nonce": Nc, "role": R, "name": N, "seal": [S...], "key_id": I})  ───►
                                      ◄───     {"auth": "hmac-sha256", "nonce": Ns, "seal": S,
                                                "proof": HMAC(K, "server" | Nc | Ns | T)}
    check the server's proof
    hello({"proof": HMAC(K, "client" | Ns | Nc | T)})  ───►
                                      ◄───     {"auth": "ok", ...}   (or AuthError, then close)

``T`` is the *transcript* (:func:`transcript`): the role, name and sealing
offer the client sent and the sealing the server chose. Both proofs cover
it, so nobody in the middle can turn a client into a node, rename it, or
strip the sealing offer: the proofs would not match. With a sealing suite
chosen, every frame after the final ``ok`` is sealed
(:mod:`mesh.core.wire.sealing`) with keys derived from K, both nonces and T.

A first ``hello`` without ``role`` is the original (version 1) handshake:
no transcript in the proofs, the caller is a client, and nothing is sealed.
It keeps clients written against the first protocol working, as clients only.

Roles: a *node* may call every method, peers' methods included (gossip,
steal, result, ...); a *client* may call what a user needs (infer, models,
status, ping). Which methods are whose is declared with the method table
(``mesh.rpc.Methods.peer_only``). A node may also hold a separate *client
key*: who proves that key is a client, whatever it claims. The mesh key may
claim either role. On an open node (no key) the declared role is taken as
it comes: a caller that sends no ``hello`` at all is a client.

The two proofs use different labels so that one can never stand in for the
other.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from mesh.errors import AuthError, BadRequest, Forbidden

__all__ = [
    "CLIENT",
    "MAX_NONCE_BYTES",
    "MIN_NONCE_BYTES",
    "NODE",
    "NONCE_BYTES",
    "ROLES",
    "SEAL_NONE",
    "SEAL_SUITES",
    "Claims",
    "HandshakeState",
    "ServerHandshake",
    "Session",
    "check_nonce",
    "choose_suite",
    "client_proof",
    "mesh_id",
    "parse_claims",
    "server_proof",
    "transcript",
    "verify_server_proof",
]

NONCE_BYTES = 32
MIN_NONCE_BYTES = 16
MAX_NONCE_BYTES = 64
_SERVER_LABEL = b"edgemesh/hello/server\x00"
_CLIENT_LABEL = b"edgemesh/hello/client\x00"
_MESH_ID_LABEL = b"edgemesh/mesh-id\x00"
_TRANSCRIPT_LABEL = b"edgemesh/hello/v2\x00"

NODE = "node"
CLIENT = "client"
ROLES = (NODE, CLIENT)
# Sealing suites, the server's preference first: AES-256-GCM where the CPU has
# AES instructions (most), ChaCha20-Poly1305 (RFC 8439) for a client that has
# none and offers only that. Keys come from HKDF-SHA256 either way.
SEAL_SUITES = ("aes-256-gcm", "chacha20-poly1305")
SEAL_NONE = "none"
_MAX_NAME = 255
_MAX_OFFER = 8


def mesh_id(key: bytes | None) -> str:
    """A public name for the mesh a key defines: a hash of the key, never the key.

    Nodes advertise it so that members of different meshes can tell each
    other apart before they try to authenticate. An open mesh is ``"open"``.
    The same hash of a client key is that key's ``key_id`` in ``hello``.
    """
    if key is None:
        return "open"
    return hashlib.sha256(_MESH_ID_LABEL + key).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Claims:
    """What a caller's first ``hello`` says about itself (version 2), or nothing (version 1)."""

    role: str = CLIENT
    name: str = ""
    seal: tuple[str, ...] = ()
    key_id: str | None = None
    version: int = 1


def parse_claims(args: dict[Any, Any]) -> Claims:
    """The role, name, sealing offer and key id of a first ``hello``, checked.

    A map without ``role`` is a version-1 hello: a client that seals nothing.
    """
    key_id = args.get("key_id")
    if key_id is not None and (not isinstance(key_id, str) or not 0 < len(key_id) <= 64):
        raise BadRequest("hello: key_id must be the key's id (a short hex string)")
    if "role" not in args:
        return Claims(key_id=key_id)
    role = args["role"]
    if role not in ROLES:
        raise BadRequest(f"hello: role must be 'node' or 'client', got {str(role)[:32]!r}")
    name = args.get("name", "")
    if not isinstance(name, str) or len(name) > _MAX_NAME or not name.isprintable():
        raise BadRequest(f"hello: name must be up to {_MAX_NAME} printable characters")
    if role == NODE and not name:
        raise BadRequest("hello: a node must give its name")
    offer = args.get("seal", [])
    if (
        not isinstance(offer, list)
        or len(offer) > _MAX_OFFER
        or not all(isinstance(suite, str) and 0 < len(suite) <= 32 for suite in offer)
    ):
        raise BadRequest(f"hello: seal must be a list of up to {_MAX_OFFER} suite names")
    return Claims(role=role, name=name, seal=tuple(offer), key_id=key_id, version=2)


def choose_suite(offer: tuple[str, ...]) -> str:
    """The sealing suite for a client's offer: our first preference it offers, else none."""
    return next((suite for suite in SEAL_SUITES if suite in offer), SEAL_NONE)


def transcript(claims: Claims, seal: str) -> bytes:
    """What both proofs (and the session keys) bind: the client's claims and the
    server's sealing choice. Empty for a version-1 hello."""
    if claims.version == 1:
        return b""
    parts = (claims.role, claims.name, ",".join(claims.seal), seal)
    return _TRANSCRIPT_LABEL + b"".join(part.encode() + b"\x00" for part in parts)


def server_proof(key: bytes, client_nonce: bytes, server_nonce: bytes, binds: bytes = b"") -> bytes:
    """What the server sends to prove it holds ``key`` (``binds``: the transcript)."""
    message = _SERVER_LABEL + client_nonce + server_nonce + binds
    return hmac.new(key, message, hashlib.sha256).digest()


def client_proof(key: bytes, client_nonce: bytes, server_nonce: bytes, binds: bytes = b"") -> bytes:
    """What the client sends to prove it holds ``key`` (``binds``: the transcript)."""
    message = _CLIENT_LABEL + server_nonce + client_nonce + binds
    return hmac.new(key, message, hashlib.sha256).digest()


def verify_server_proof(
    key: bytes, client_nonce: bytes, server_nonce: bytes, proof: object, binds: bytes = b""
) -> None:
    """Raise AuthError unless ``proof`` is the server's proof for these nonces."""
    if not isinstance(proof, bytes) or not hmac.compare_digest(
        proof, server_proof(key, client_nonce, server_nonce, binds)
    ):
        raise AuthError(
            "the node could not prove it holds our key (wrong key, or the hello was altered)"
        )


def check_nonce(nonce: object) -> bytes:
    """A peer's nonce, checked for type and length."""
    if not isinstance(nonce, bytes) or not MIN_NONCE_BYTES <= len(nonce) <= MAX_NONCE_BYTES:
        raise BadRequest(
            f"hello: nonce must be {MIN_NONCE_BYTES}..{MAX_NONCE_BYTES} bytes of binary"
        )
    return nonce


@dataclass(frozen=True, slots=True)
class Session:
    """What one side knows once the handshake is done: who the caller is, and
    what the sealing keys derive from (``seal`` is ``"none"`` on plain links)."""

    role: str
    name: str
    seal: str = SEAL_NONE
    key: bytes | None = field(default=None, repr=False)
    client_nonce: bytes = b""
    server_nonce: bytes = b""
    transcript: bytes = b""
    # Whether the caller proved the client key rather than the mesh key.
    by_client_key: bool = False


class HandshakeState(Enum):
    """Where a server-side connection is in the handshake."""

    AWAITING_NONCE = "awaiting-nonce"
    AWAITING_PROOF = "awaiting-proof"
    AUTHENTICATED = "authenticated"


@dataclass
class ServerHandshake:
    """The server side of one connection's handshake.

    ``key`` None means an open node: every connection counts as
    authenticated from the start (as a client until a ``hello`` says it is a
    node), and ``hello`` only reports that. ``server_nonce`` must be fresh
    random bytes for every connection. ``client_key``, when set, is a second
    key whose holders are clients only. ``seal`` False never chooses a
    sealing suite.
    """

    key: bytes | None
    server_nonce: bytes
    client_key: bytes | None = field(default=None, repr=False)
    seal: bool = True
    state: HandshakeState = field(init=False)
    session: Session = field(init=False)
    _claims: Claims = field(init=False, default_factory=Claims)
    _client_nonce: bytes = field(init=False, default=b"")
    _using: bytes = field(init=False, default=b"", repr=False)
    _choice: str = field(init=False, default=SEAL_NONE)
    _by_client_key: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.state = (
            HandshakeState.AUTHENTICATED if self.key is None else HandshakeState.AWAITING_NONCE
        )
        self.session = Session(role=CLIENT, name="")

    @property
    def authenticated(self) -> bool:
        """Whether calls other than ``hello`` are allowed on this connection."""
        return self.state is HandshakeState.AUTHENTICATED

    @property
    def role(self) -> str:
        """The caller's role: ``"client"`` until the handshake says otherwise."""
        return self.session.role

    def hello(self, params: list[object]) -> dict[str, object]:
        """Handle one ``hello`` call; returns the auth part of its result.

        Raises AuthError for a wrong proof or a key that may not claim the
        role (the edge then closes the connection) and BadRequest for a
        malformed call. Once the state is AUTHENTICATED, :attr:`session`
        says who the caller is and whether to seal.
        """
        if len(params) != 1 or not isinstance(params[0], dict):
            raise BadRequest("hello takes one map: {nonce} first, then {proof}")
        args = params[0]
        if self.key is None:
            return self._open_hello(args)
        if "proof" in args:
            return self._check_proof(args["proof"])
        if self.state is HandshakeState.AUTHENTICATED:
            return {"auth": "ok"}
        self._client_nonce = check_nonce(args.get("nonce"))
        claims = parse_claims(args)
        self._using = self._key_for(claims)
        self._claims = claims
        self._choice = choose_suite(claims.seal) if self.seal else SEAL_NONE
        self.state = HandshakeState.AWAITING_PROOF
        binds = transcript(claims, self._choice)
        reply: dict[str, object] = {
            "auth": "hmac-sha256",
            "nonce": self.server_nonce,
            "proof": server_proof(self._using, self._client_nonce, self.server_nonce, binds),
        }
        if claims.version == 2:
            reply["seal"] = self._choice
        return reply

    def _open_hello(self, args: dict[Any, Any]) -> dict[str, object]:
        # An open node trusts what callers declare; nothing is sealed without a key.
        if self.session.role == NODE or "role" not in args:
            return {"auth": "none"}
        claims = parse_claims(args)
        self.session = Session(role=claims.role, name=claims.name)
        # "caller_role", not "role": the node's hello info already says what it is.
        return {"auth": "none", "caller_role": claims.role, "seal": SEAL_NONE}

    def _key_for(self, claims: Claims) -> bytes:
        # The client key only when the caller names it; anything else is
        # checked against the mesh key (a wrong key then fails its proof).
        assert self.key is not None
        if self.client_key is not None and claims.key_id == mesh_id(self.client_key):
            if claims.role == NODE:
                raise Forbidden(
                    "a client key cannot join the mesh as a node; nodes need the mesh key"
                )
            self._by_client_key = True
            return self.client_key
        return self.key

    def _check_proof(self, proof: object) -> dict[str, object]:
        if self.state is not HandshakeState.AWAITING_PROOF:
            raise AuthError("hello: proof sent before the nonce exchange")
        binds = transcript(self._claims, self._choice)
        expected = client_proof(self._using, self._client_nonce, self.server_nonce, binds)
        if not isinstance(proof, bytes) or not hmac.compare_digest(proof, expected):
            raise AuthError("mesh key mismatch: the client's proof is wrong")
        self.state = HandshakeState.AUTHENTICATED
        self.session = Session(
            role=self._claims.role,
            name=self._claims.name,
            seal=self._choice,
            key=self._using,
            client_nonce=self._client_nonce,
            server_nonce=self.server_nonce,
            transcript=binds,
            by_client_key=self._by_client_key,
        )
        return {"auth": "ok"}
