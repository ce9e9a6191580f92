"""What the tracker changes in h11, installed once by the server: reason phrases in its status
lines (:mod:`~tracker.h11patches.statusline`) and lower-case header names of its own
(:mod:`~tracker.h11patches.headers`). tracker/zerocopy/README.md lists each assumption and
its canary test.

May import: :mod:`tracker.core`, :mod:`tracker.errors`.
"""
