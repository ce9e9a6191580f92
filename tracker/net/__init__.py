"""What every outgoing HTTP request of the tracker shares: clients, limits, the egress policy.

:mod:`~tracker.net.clients` builds the httpx clients for a group's own sources (TLS
settings, bounded pools, explicit timeouts, no cookie jar); :mod:`~tracker.net.limits` reads
answers with size caps and turns transport failures and statuses into one-line reasons;
:mod:`~tracker.net.egress` decides which addresses a URL that came from the network may
reach, after resolution and before any connect.

May import: :mod:`tracker.core` and :mod:`tracker.errors`.
"""
