"""What the tracker changes in h11, installed once by the server: reason phrases in its status
lines (:mod:`~tracker.h11patches.statusline`), lower-case header names of its own
(:mod:`~tracker.h11patches.headers`), and bytes after a request that closes its connection
dropped (:mod:`~tracker.h11patches.closing`). tracker/zerocopy/README.md lists each assumption and
its canary test.

May import: :mod:`tracker.core`, :mod:`tracker.errors`.
"""
