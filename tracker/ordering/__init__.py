"""Which source of which archive comes first: the ranked index and its parts (docs/ranking.md).

The in-memory index of every group, with what the tracker itself holds
(:mod:`~tracker.ordering.index`), a group's ranking (:mod:`~tracker.ordering.ranking`: each
target's part kept between re-rankings, the pairs by time to running), the predicted time to a
running node (:mod:`~tracker.ordering.predict`), the screens that keep copies out
(:mod:`~tracker.ordering.screens`: the trust in a group's sources, the copies a proof refused,
the groups that rank proven copies only), what transfers taught about each source
(:mod:`~tracker.ordering.sourcehistory`: throughputs measured, the live rate of the transfers
running now, the copies that failed their check held back) and what is kept for the nodes
that need it (:mod:`~tracker.ordering.keeping`).

May import: :mod:`tracker.core`, :mod:`tracker.proof` and :mod:`tracker.errors` (the
import-linter contract in pyproject.toml checks it). No event loop, no network.
"""
