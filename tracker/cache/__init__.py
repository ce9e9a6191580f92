"""The disk cache of proxy mode: the newest full and incremental archive of each group.

:mod:`~tracker.cache.store` validates names and paths (nothing outside the cache directory is
read or written), runs one refresher per file (temp file, writes, fsync, atomic rename) and
evicts older files of the same kind.

May import: :mod:`tracker.files`, :mod:`tracker.zerocopy`, :mod:`tracker.net`,
:mod:`tracker.core`, :mod:`tracker.errors`.
"""
