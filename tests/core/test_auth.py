"""The mesh-key handshake, both sides driven in memory."""

from __future__ import annotations

import pytest

from mesh.core.wire import auth
from mesh.errors import AuthError, BadRequest

KEY = b"k" * 32
CLIENT_NONCE = b"c" * 32
SERVER_NONCE = b"s" * 32


def test_both_sides_prove_the_key_and_the_server_accepts() -> None:
    server = auth.ServerHandshake(key=KEY, server_nonce=SERVER_NONCE)
    assert not server.authenticated
    first = server.hello([{"nonce": CLIENT_NONCE}])
    assert first["auth"] == "hmac-sha256"
    assert first["nonce"] == SERVER_NONCE
    auth.verify_server_proof(KEY, CLIENT_NONCE, SERVER_NONCE, first["proof"])
    second = server.hello([{"proof": auth.client_proof(KEY, CLIENT_NONCE, SERVER_NONCE)}])
    assert second == {"auth": "ok"}
    assert server.authenticated


def test_wrong_key_is_refused_by_the_server() -> None:
    server = auth.ServerHandshake(key=KEY, server_nonce=SERVER_NONCE)
    server.hello([{"nonce": CLIENT_NONCE}])
    wrong = auth.client_proof(b"w" * 32, CLIENT_NONCE, SERVER_NONCE)
    with pytest.raises(AuthError, match="mismatch"):
        server.hello([{"proof": wrong}])
    assert not server.authenticated


def test_wrong_key_is_refused_by_the_client() -> None:
    server = auth.ServerHandshake(key=b"w" * 32, server_nonce=SERVER_NONCE)
    first = server.hello([{"nonce": CLIENT_NONCE}])
    with pytest.raises(AuthError, match="could not prove"):
        auth.verify_server_proof(KEY, CLIENT_NONCE, SERVER_NONCE, first["proof"])


def test_server_proof_cannot_stand_in_for_the_client_proof() -> None:
    # A reflection attempt: send the server's own proof back as the client's.
    server = auth.ServerHandshake(key=KEY, server_nonce=SERVER_NONCE)
    first = server.hello([{"nonce": CLIENT_NONCE}])
    with pytest.raises(AuthError):
        server.hello([{"proof": first["proof"]}])


def test_a_proof_for_another_server_nonce_is_not_replayable() -> None:
    old = auth.client_proof(KEY, CLIENT_NONCE, b"o" * 32)
    server = auth.ServerHandshake(key=KEY, server_nonce=SERVER_NONCE)
    server.hello([{"nonce": CLIENT_NONCE}])
    with pytest.raises(AuthError):
        server.hello([{"proof": old}])


def test_proof_before_nonce_is_refused() -> None:
    server = auth.ServerHandshake(key=KEY, server_nonce=SERVER_NONCE)
    with pytest.raises(AuthError, match="before the nonce"):
        server.hello([{"proof": b"x" * 32}])


@pytest.mark.parametrize(
    "params",
    [[], [1], ["nonce"], [{"nonce": b"short"}], [{"nonce": "text" * 10}], [{"nonce": b"x" * 65}]],
)
def test_malformed_hello_is_a_bad_request(params: list[object]) -> None:
    server = auth.ServerHandshake(key=KEY, server_nonce=SERVER_NONCE)
    with pytest.raises(BadRequest):
        server.hello(params)


def test_open_node_is_authenticated_from_the_start() -> None:
    server = auth.ServerHandshake(key=None, server_nonce=b"")
    assert server.authenticated
    assert server.hello([{"nonce": CLIENT_NONCE}]) == {"auth": "none"}


def test_mesh_id_is_a_hash_not_the_key() -> None:
    assert auth.mesh_id(None) == "open"
    ident = auth.mesh_id(KEY)
    assert len(ident) == 16
    assert KEY.decode() not in ident
    assert ident == auth.mesh_id(KEY)
    assert ident != auth.mesh_id(b"other key 123456")
