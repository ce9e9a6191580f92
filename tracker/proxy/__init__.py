"""Proxy mode: bytes fetched from the sources and passed on, cached on the way.

:mod:`~tracker.proxy.upstream` asks one source (redirects, credentials only to its own origin,
header whitelists); :mod:`~tracker.proxy.failover` asks the sources of a file in turn
(failover, hedging) and the same source again for the rest of a broken body, only when it
proves it is the same file;
:mod:`~tracker.proxy.transfers` runs one pump per stream in a nursery the service owns (its
launcher holds the tunables, :class:`~tracker.proxy.upstream.ProxySettings`);
:mod:`~tracker.proxy.ask` is what a client asked, read once by the web layer;
:mod:`~tracker.proxy.decisions` decides a request's byte path from its facts, with
pure functions (no event loop, no network), which the route
(:meth:`tracker.proxy.streamer.Route.answer`) asks in order and performs with the executors
(:mod:`~tracker.proxy.storedcopies`, :mod:`~tracker.proxy.refreshing`, which also lets
clients read a refresh's growing temp file); every answer is a framework-free
:class:`~tracker.serving.httpanswer.Answer`; the bytes move in the pumps: the relay
(:mod:`~tracker.proxy.relay`) and the fill of a refresh from one or several sources
(:mod:`~tracker.proxy.cachefill`), over what every pump shares (:mod:`~tracker.proxy.pumps`:
the upstream opened with its early head, the channel to a client for bytes that cross Python);
:mod:`~tracker.proxy.prefetch` refreshes new best files before anyone asks;
:mod:`~tracker.proxy.bucketcopies` is the object store's part (303 to presigned URLs, the holder
replica as a source, the upload beside a refresh).

May import: :mod:`tracker.cache`, :mod:`tracker.objectstore`, :mod:`tracker.proof.archive`,
:mod:`tracker.zerocopy`, :mod:`tracker.net`, :mod:`tracker.core`, :mod:`tracker.errors`.
Not :mod:`tracker.discovery`: what the sources hold reaches this package through the index.
Not the web framework (an import-linter contract).
"""
