"""Where snapshots are: the sources, the scrape loop, each target's health.

One module per kind of source turns what a source says into
:class:`~tracker.core.snapshots.SnapshotInfo` values: :mod:`~tracker.discovery.sidecar`
(``/v1/snapshots`` JSON), :mod:`~tracker.discovery.http` (a validator's aliases and their
redirects), :mod:`~tracker.discovery.local` (a directory), :mod:`~tracker.discovery.consul`
(service discovery). :mod:`~tracker.discovery.scrape` builds the target set every interval,
probes every target with bounded concurrency and timeouts, and feeds the index.

May import: :mod:`tracker.net`, :mod:`tracker.core`, :mod:`tracker.errors`. Nothing here
serves a request.
"""
