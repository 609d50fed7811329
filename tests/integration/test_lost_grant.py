"""A grant whose reply is lost is taken back at once, not at lease expiry (issue 18).

Two real nodes in one event loop over real RPC on 127.0.0.1: n0 owns the
request but cannot run its model; n1 can, and steals it. The one fault here
cannot be caused for real on loopback: the connection carrying n0's grant
reply breaks as the reply is sent (a cable pulled at that instant). It is
injected by wrapping n0's ``steal`` handler so that it aborts the thief's
connection after granting: the reply is never written. Everything else is
the product's own: n1's steal fails, its link comes back, its gossip reports
what it holds (nothing of n0's) with its ask settled, and n0 takes the
request back and lets n1 steal it again, well before the 5 s lease.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from mesh.rpc import RpcConnection
from mesh.sdk.client import MeshClient
from tests.helpers.nodes import counters, mesh_of

pytestmark = pytest.mark.timeout(60)

# Shorter than the 5 s minimum lease: without reconciliation the request
# would sit with n1's ghost grant until its deadline passed.
DEADLINE_S = 3.0


async def test_a_grant_whose_reply_is_lost_is_taken_back_without_waiting_for_the_lease(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with mesh_of([{"models": ("cnn-heavy",)}, {"models": ("digits-small",)}]) as nodes:
        owner, thief = nodes
        sharing = owner._work
        assert sharing is not None
        grant = sharing.on_steal
        lost: list[int] = []

        def lose_the_first_reply(connection: RpcConnection, params: list[Any]) -> dict[str, Any]:
            reply = grant(connection, params)
            if not lost and reply["jobs"]:
                lost.append(len(reply["jobs"]))
                connection.abort()  # the reply is never written
            return reply

        monkeypatch.setattr(sharing, "on_steal", lose_the_first_reply)
        async with MeshClient(f"127.0.0.1:{owner.port}") as client:
            answer = await client.infer(
                "digits-small", {"X": np.zeros((1, 64), dtype=np.float32)}, deadline=DEADLINE_S
            )
        assert lost == [1]
        assert answer.ran_on == thief.config.name
        owned = counters(owner)
        assert owned.get("reclaimed") == 1, owned
        assert owned["served_remote"] == 1, owned
        assert owned.get("late_dropped", 0) == 0, owned
        assert counters(thief)["stolen_in"] == 1
