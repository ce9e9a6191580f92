"""Where snapshots are: the sources, the scrape loop, each target's health.

One module per kind of source turns what a source says into
:class:`~tracker.core.snapshots.SnapshotInfo` values: :mod:`~tracker.discovery.sidecar`
(``/v1/snapshots`` JSON), :mod:`~tracker.discovery.http` (a validator's aliases and their
redirects), :mod:`~tracker.discovery.local` (a directory), :mod:`~tracker.discovery.consul`
(service discovery), :mod:`~tracker.discovery.cluster` (the cluster's nodes, decoded by
:mod:`~tracker.discovery.nodes`). :mod:`~tracker.discovery.scrape` is the loop: every
interval it builds the target set (:mod:`~tracker.discovery.targetset`), keeps each
target's health (:mod:`~tracker.discovery.roster`), probes every target with bounded
concurrency and timeouts (:mod:`~tracker.discovery.probing`), and feeds the index
(:mod:`~tracker.discovery.batches`).

May import: :mod:`tracker.net`, :mod:`tracker.core`, :mod:`tracker.errors`. Nothing here
serves a request.
"""
