"""Which source of which archive comes first: the ranked index and its parts (docs/ranking.md).

The in-memory index of every group (:mod:`~tracker.ordering.index`), a group's pairs ranked
(:mod:`~tracker.ordering.ranking`, its parts kept between re-rankings in
:mod:`~tracker.ordering.rankparts`), the predicted time to a running node
(:mod:`~tracker.ordering.predict`), the screens that keep copies out
(:mod:`~tracker.ordering.screens`: the trust in a group's sources, the copies a proof refused,
the groups that rank proven copies only), throughputs,
holdings, what is kept for the nodes that need it, rejections and the live rate of transfers.

May import: :mod:`tracker.core`, :mod:`tracker.proof` and :mod:`tracker.errors` (the
import-linter contract in pyproject.toml checks it). No event loop, no network.
"""
