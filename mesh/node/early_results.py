"""Results that arrive before the hand-off that makes their sender the holder.

When node X holds one of our requests and node Y steals it from X, X tells
us (``handoff``) over X's link while Y, once it has run the request, sends
the ``result`` over Y's own link. The two links race: Y's result can come
first, while our ledger still names X. Results are taken only from the
holder (issue 19), so such a result is kept here, bounded, and counted if
X's hand-off then names Y for that request and epoch; otherwise it is
forgotten. Nothing in here is ever trusted on its own: the scheduler still
decides, once the hand-off has made the sender the holder.
"""

from __future__ import annotations

from collections import OrderedDict

from mesh.core.wire.handover import Outcome

__all__ = ["EarlyResults"]

# Enough for every request a busy owner has away at once; a key holder
# sending made-up results can only push out older ones, never grow this.
_MAX_RESULTS = 1024
_MAX_BYTES = 64 * 1024 * 1024


def _size(outcome: Outcome) -> int:
    if isinstance(outcome, dict):
        return sum(array.nbytes for array in outcome.values())
    return 0


class EarlyResults:
    """Early results by (seq, epoch), oldest first, within a count and a byte bound."""

    def __init__(self, *, max_results: int = _MAX_RESULTS, max_bytes: int = _MAX_BYTES) -> None:
        self._max_results = max_results
        self._max_bytes = max_bytes
        self._kept: OrderedDict[tuple[int, int], tuple[str, Outcome, int]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._kept)

    def keep(self, seq: int, epoch: int, sender: str, outcome: Outcome) -> None:
        """Keep ``sender``'s result for ``seq`` at ``epoch`` (the latest one wins)."""
        size = _size(outcome)
        if size > self._max_bytes:
            return
        self._drop((seq, epoch))
        while self._kept and (
            len(self._kept) >= self._max_results or self._bytes + size > self._max_bytes
        ):
            self._drop(next(iter(self._kept)))
        self._kept[(seq, epoch)] = (sender, outcome, size)
        self._bytes += size

    def take(self, seq: int, epoch: int, holder: str) -> Outcome | None:
        """The result kept for ``seq`` at ``epoch`` if ``holder`` sent it; forgotten either way."""
        kept = self._kept.get((seq, epoch))
        if kept is None:
            return None
        self._drop((seq, epoch))
        sender, outcome, _ = kept
        return outcome if sender == holder else None

    def _drop(self, key: tuple[int, int]) -> None:
        kept = self._kept.pop(key, None)
        if kept is not None:
            self._bytes -= kept[2]
