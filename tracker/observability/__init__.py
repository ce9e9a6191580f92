"""What the tracker says about itself: structured log lines (:mod:`~tracker.observability.logs`),
those a remote party can multiply folded past a rate (:mod:`~tracker.observability.folding`),
the Prometheus metrics and their collectors (:mod:`~tracker.observability.metrics`,
:mod:`~tracker.observability.collectors`, :mod:`~tracker.observability.probemetrics`,
:mod:`~tracker.observability.proofmetrics`), and the redaction of credentials from what is
logged or shown (:mod:`~tracker.observability.redact`).

May import: :mod:`tracker.proof` and :mod:`tracker.errors` only. No event loop, no network.
"""
