"""The disk cache of proxy mode: the newest full and incremental archive of each group.

:mod:`~tracker.cache.store` validates names and paths (nothing outside the cache directory is
read or written) and keeps one refresher per file; :mod:`~tracker.cache.refresh` is that
refresh (temp file, overlapping writes, fsync, atomic rename, eviction of older files of the
same kind); :mod:`~tracker.cache.disk` holds the blocking disk helpers.

May import: :mod:`tracker.files`, :mod:`tracker.zerocopy`, :mod:`tracker.net`,
:mod:`tracker.core`, :mod:`tracker.errors`.
"""
