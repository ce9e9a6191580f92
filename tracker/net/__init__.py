"""What every outgoing HTTP request of the tracker shares: clients, limits, the egress policy.

It is the network boundary: httpx's, httpcore's and h11's exceptions are caught here (and in
the fenced :mod:`tracker.zerocopy`) and nowhere else. :mod:`~tracker.net.exchange` sends
requests, HEADs and streams and maps those failures once into
:class:`~tracker.errors.TransportError` with a one-line reason (:mod:`~tracker.net.bodyreads`
reads bodies the same way); :mod:`~tracker.net.httpclients` builds the httpx clients for a
group's own sources (TLS settings, bounded pools, explicit timeouts, no cookie jar);
:mod:`~tracker.net.limits` reads answers with size caps and turns statuses into one-line
reasons;
:mod:`~tracker.net.egress` decides which addresses a URL that came from the network may
reach, after resolution and before any connect.

May import: :mod:`tracker.core` and :mod:`tracker.errors`.
"""
