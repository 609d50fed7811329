"""The ``hello`` handshake's steps inside one connection, and when its link turns sealed.

The rules (nonces, proofs, roles, sealing suites) are in
:mod:`mesh.core.wire.auth`, and the client's claims and proofs are built in
:mod:`mesh.rpc.client`. What is here is the state a connection keeps for
the handshake: the server side answering ``hello``, the client side marking
its final ``hello``, and the session whose keys seal every byte after the
handshake's last message (:class:`~mesh.rpc.sealed.SealedLink`). Apart from
:mod:`mesh.rpc.connection` so that its message pump only asks "switch now?".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mesh.core.wire import auth

__all__ = ["LinkHandshake"]


class LinkHandshake:
    """One connection's side of the handshake.

    ``server`` is the server side's mesh-key state; None means this side does
    not ask the peer to authenticate (a client, which checks the server with
    its own handshake instead). ``switch`` is set once the handshake's last
    message was parsed or answered: every byte after it is sealed with that
    session (see :meth:`take_switch`).
    """

    __slots__ = ("_final_session", "_hello_info", "_sealed", "final_msgid", "server", "switch")

    def __init__(
        self,
        server: auth.ServerHandshake | None,
        hello_info: Callable[[], dict[str, Any]] | None,
    ) -> None:
        self.server = server
        self._hello_info = hello_info
        self.switch: auth.Session | None = None
        # The client side's final hello, whose answer starts sealing.
        self.final_msgid: int | None = None
        self._final_session: auth.Session | None = None
        self._sealed = False

    @property
    def role(self) -> str:
        """The peer's role: for a server, what its handshake proved (``"client"``
        until then); for the side that dialed, ``"node"`` (we only dial nodes)."""
        if self.server is None:
            return auth.NODE
        return self.server.session.role

    @property
    def peer_name(self) -> str:
        """The node name the peer's handshake declared ("" for a client or the dialing side)."""
        return "" if self.server is None else self.server.session.name

    @property
    def by_client_key(self) -> bool:
        """Whether the peer proved the node's client key (a client only, never a member)."""
        return self.server is not None and self.server.session.by_client_key

    @property
    def awaited(self) -> bool:
        """Whether this side still waits for the peer to pass the handshake."""
        return self.server is not None and not self.server.authenticated

    def answer(self, params: list[Any]) -> dict[str, Any]:
        """Server step: the answer to one ``hello`` from the peer.

        Raises :class:`~mesh.errors.AuthError` when the peer is refused (the
        connection then closes) and another MeshError for a bad ``hello``.
        """
        handshake = self.server or auth.ServerHandshake(key=None, server_nonce=b"")
        result = handshake.hello(params)
        if self._hello_info is not None and result.get("auth") != "hmac-sha256":
            # Say who we are only once the peer may know it.
            result = {**self._hello_info(), **result}
        session = handshake.session
        if result.get("auth") == "ok" and session.seal != auth.SEAL_NONE and not self._sealed:
            self.switch = session
        return result

    def final_hello(self, msgid: int, session: auth.Session) -> None:
        """Client step: our final ``hello`` goes out as ``msgid``; once the node
        accepts it, seal after its answer (a session sealed ``"none"`` stays plain)."""
        if session.seal != auth.SEAL_NONE:
            self.final_msgid = msgid
            self._final_session = session

    def final_answered(self, *, accepted: bool) -> None:
        """The response to our final ``hello`` (msgid ``final_msgid``) came; if it
        accepted us, switch."""
        self.final_msgid = None
        if accepted:
            self.switch = self._final_session

    def take_switch(self) -> auth.Session:
        """The session to seal with from now on; the link is sealed for good."""
        session = self.switch
        assert session is not None
        self.switch = None
        self._sealed = True
        return session
