"""The tracker's pairs ranked again with the ledger's own files (docs/ranking.md). Pure.

A tracker that ranks by the time to a running node lists every pair's ``predicted_seconds``
for a node that has nothing. A full the ledger already holds costs this node nothing to
download, so the pairs are priced again by the same predictor
(:func:`tracker.ordering.predict.predicted_seconds`): the ledger's files left out, each other file
at the fastest throughput the tracker lists for it (else the assumed one), the tip the newest
slot on offer. The tracker's first pair stays the choice unless another beats it by the
switch margin (:func:`tracker.ordering.predict.choose`), so fetch and the redirects agree when
the ledger changes nothing.
"""

from __future__ import annotations

import math

from tracker.config.schema import Ranking
from tracker.core.snapshots import SnapshotInfo
from tracker.fetch.listing import RemoteSnapshot
from tracker.ordering.predict import Download, choose, predicted_seconds


def rerank(
    remote: list[RemoteSnapshot], local: list[SnapshotInfo], ranking: Ranking | None = None
) -> list[RemoteSnapshot]:
    """``remote`` (the tracker's order) ranked for a ledger holding ``local``; as it is
    when the tracker does not rank by time to running (a pair without a prediction)."""
    if not remote or any(s.predicted is None for s in remote):
        return remote
    ranking = ranking or Ranking()
    held = {f.bare_name for info in local for f in info.files}
    tip = max(s.slot for s in remote)

    def cost(snapshot: RemoteSnapshot) -> float:
        if snapshot.full is None:
            return math.inf
        wanted = [
            Download(f.size, f.throughput)
            for f in (snapshot.full, snapshot.incremental)
            if f is not None and f.file_name not in held
        ]
        return predicted_seconds(wanted, snapshot.slot, tip, ranking)

    costs = [cost(s) for s in remote]
    order = sorted(range(len(remote)), key=costs.__getitem__)
    chosen = choose([(i, costs[i]) for i in order], 0, ranking.switch_margin)
    return [remote[i] for i in sorted(order, key=lambda i: i != chosen)]
