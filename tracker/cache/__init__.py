"""The disk cache of proxy mode: the newest full and incremental archive of each group.

:mod:`~tracker.cache.store` validates names and paths (nothing outside the cache directory is
read or written) and keeps one refresher per file; :mod:`~tracker.cache.refresh` is that
refresh (overlapping or spliced writes, readers of the growing file, the archive check,
promotion or removal), given its cache's disk operations and limits
(:class:`~tracker.cache.disk.DiskOps`); :mod:`~tracker.cache.checked` which cached files passed
their check, with their digests (restored at start-up or checked again);
:mod:`~tracker.cache.disk` holds the blocking disk helpers, among them the steps at both ends
of a refresh (room and a temp file; fsync, atomic rename, eviction of older files of the same
kind) and the kernel's writeback; :mod:`~tracker.cache.opening` the cache of each directory
used and which one is configured, each opened at start-up and at each reload off the event
loop.

May import: :mod:`tracker.proof.archive`, :mod:`tracker.serving`, :mod:`tracker.zerocopy`,
:mod:`tracker.net`, :mod:`tracker.core`, :mod:`tracker.errors`.
"""
