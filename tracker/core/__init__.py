"""The tracker's values: archive names, the index, metrics, log lines.

Owns what every other package shares and nothing that talks to the network (the config is
the package above, :mod:`tracker.config`): URL redaction (:mod:`~tracker.core.redact`),
archive names and snapshot values
(:mod:`~tracker.core.snapshots`), the ranked in-memory index (:mod:`~tracker.core.index`),
the Prometheus collectors (:mod:`~tracker.core.metrics`), structured log lines
(:mod:`~tracker.core.logs`), short texts for one-line reasons (:mod:`~tracker.core.text`) and
the strict parsers every module uses on network input (:mod:`~tracker.core.untrusted`), the
one ``Content-Range`` parser (:mod:`~tracker.core.contentrange`) and the one rule of when two
answers are the same file (:mod:`~tracker.core.samefile`), and the one bounded reader and
atomic writer of small files on disk (:mod:`~tracker.core.smallfiles`).

May import: :mod:`tracker.errors` and third-party libraries only (the import-linter contract
in pyproject.toml checks it). No trio, no sockets: everything here is synchronous.
"""
