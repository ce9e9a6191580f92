"""The cluster level (docs/architecture.md, "The cluster level").

:mod:`~tracker.proof.cluster.clustervotes` asks the RPCs for the votes of a slot and keeps
the tallies per slot and bank hash with their back-off; :mod:`~tracker.proof.cluster.lifting`
lifts the cache's copies by them (a refresh of a group requiring level cluster waits for the
votes; held copies are lifted in the background), through protocols of the cache's parts,
so the cache above calls it and it imports nothing of the cache.

May import: :mod:`tracker.net`, :mod:`tracker.config`, :mod:`tracker.core`,
:mod:`tracker.observability`, the proof's lower sub-packages, :mod:`tracker.errors`.
"""
