"""The HTTP face of the tracker: Quart apps, routes, the choice of byte path, listeners.

:mod:`~tracker.web.api` holds the public routes (JSON listings, short redirects, archive
routes) and :mod:`~tracker.web.queries` parses their parameters;
:mod:`~tracker.web.delivery` answers an archive request by redirect, local file or proxy;
:mod:`~tracker.web.internal_api` serves the status page (rendered by
:mod:`~tracker.web.statuspage` from the values of :mod:`~tracker.web.statusview` with the
texts of :mod:`~tracker.web.statusformat`, gathered by :mod:`~tracker.web.statusgather`),
metrics and reload; :mod:`~tracker.web.listeners` binds or inherits the sockets. What
tells systemd and Prometheus how things go is not HTTP and sits beside the composition root
(:mod:`tracker.notify`, :mod:`tracker.reporting`).

May import every package below it: :mod:`tracker.proxy`, :mod:`tracker.discovery`,
:mod:`tracker.cache`, :mod:`tracker.proof.archive`, :mod:`tracker.serving`,
:mod:`tracker.accounting`, :mod:`tracker.zerocopy`, :mod:`tracker.net`, :mod:`tracker.core`,
:mod:`tracker.errors`.
"""
