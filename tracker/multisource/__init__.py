"""One download engine for one archive over several byte-identical sources: parallel
``Range`` pieces, work stealing, slow sources dropped, per-origin limits honoured; used by
``snapshot-tracker fetch`` (:mod:`tracker.fetch.download`) and by the cache's refresh in
proxy mode (:mod:`tracker.proxy.cachefill`). Each caller keeps its own policy (which
sources go together, where pieces go, what a client sees); the mechanism is here.

:mod:`~tracker.multisource.claims` is the pure bookkeeping of who fetches which bytes (in
order, or in a window ahead of a growing file's readers); :mod:`~tracker.multisource.sources`
a source and the checks of every answer; :mod:`~tracker.multisource.crew` the connections
that claim, fetch and write pieces (spliced when the answer allows); which sources are too
slow to keep is :mod:`~tracker.multisource.judging` (pure); which sources may give pieces of
one copy by the SHA-256 each publishes is :func:`~tracker.multisource.samefile.refusals` (pure).
The rules every answer of a download is held to live here too: the one ``Content-Range`` parser
(:mod:`~tracker.multisource.contentrange`) and the one rule of when two answers are the same
file (:mod:`~tracker.multisource.samefile`). Whose word each source is, the liars of a copy
that failed its check found by comparing ranges, and which bytes no level binds are asked
again of whom: :mod:`~tracker.multisource.piececheck`, shared by the cache's repair and
`snapshot-tracker fetch`.

May import: :mod:`tracker.zerocopy`, :mod:`tracker.clientwire`, :mod:`tracker.net`,
:mod:`tracker.core`, :mod:`tracker.observability`, :mod:`tracker.errors`. Not the web
framework, not the cache.
"""
