"""The tracker's shared values: archive names, digests, strict parsers.

Owns what many packages share and nothing that talks to the network (the config is a package
above, :mod:`tracker.config`; what the tracker says about itself is
:mod:`tracker.observability`, the ranking :mod:`tracker.ordering`): archive names and
snapshot values (:mod:`~tracker.core.snapshots`), the digests and proofs of held copies
(:mod:`~tracker.core.digests`), short texts for one-line reasons (:mod:`~tracker.core.text`) and the
strict parsers every module uses on network input (:mod:`~tracker.core.untrusted`), and the one
bounded reader and atomic writer of small files on disk (:mod:`~tracker.core.smallfiles`).

May import: :mod:`tracker.errors`, the proof's bottom (:mod:`tracker.proof.levels`,
:mod:`tracker.proof.statements`) and third-party libraries only (the
import-linter contract in pyproject.toml checks it). No trio, no sockets: everything here is
synchronous.
"""
