"""Bytes that never enter Python: the server's side of what relies on library internals.

:mod:`~tracker.zerocopy.server` runs hypercorn's connection handler over the tracker's own
socket stream (:mod:`~tracker.zerocopy.stream`, with the lingering close);
:mod:`~tracker.zerocopy.connection` is the placeholder hand-shake that lets a body send a
file range (``sendfile``) or an upstream socket's bytes (``splice``) instead of Python bytes;
:mod:`~tracker.zerocopy.pieces` holds the pieces, their placeholders and how one goes out
(worker threads, waits in the event loop); :mod:`~tracker.zerocopy.kernelcopy` holds the
blocking system-call loops, :mod:`~tracker.zerocopy.filesplice` the one loop that splices an
upstream body into a file (a cache refresh, a fetch); :mod:`~tracker.zerocopy.limit` the
connection limit; :mod:`~tracker.zerocopy.keepalive` the keep-alive timeout. The client's
side is :mod:`tracker.clientwire`, what the server changes in h11 :mod:`tracker.h11patches`.

These three packages alone use undocumented behaviour of hypercorn, h11, Quart and httpcore;
README.md beside this file lists each assumption and the test that fails when a library
changes it. May import: :mod:`tracker.h11patches`, :mod:`tracker.net`, :mod:`tracker.core`,
:mod:`tracker.errors`.
"""
