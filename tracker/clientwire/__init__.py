"""The client side's wire, over httpcore's internals: the httpx transport of archive downloads
with big socket reads and exact response heads, and the lean HEAD client of discovered nodes
(:mod:`~tracker.clientwire.transport`); below botocore's, the object store's answers read
whole within a bound of bytes and time (:mod:`~tracker.clientwire.storewire`).
tracker/zerocopy/README.md lists each assumption it makes of a library and the test that
fails when the library changes it.

May import: :mod:`tracker.h11patches`, :mod:`tracker.net`, :mod:`tracker.core`,
:mod:`tracker.errors`.
"""
