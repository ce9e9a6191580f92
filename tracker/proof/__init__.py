"""Archives proven, not just well formed (docs/architecture.md, "Proven archives").

The proof of an archive is a thing of its own, with no event loop, no network and no file
system but the run files of the accounts level's spilled index, in a directory its caller
names (:mod:`tracker.proof.spill`; docs/architecture.md, "Bounded memory"): its formats
(agave's snapshot manifest, its account storages), the streaming decoders of those formats
(parsers of the request protocol of :mod:`tracker.proof.parsing`, fed by the one pass the
archive check already makes over the tar stream), and the levels an archive reaches
(:mod:`tracker.proof.levels`), and the cluster's votes for a slot: vote instructions decoded
(:mod:`tracker.proof.votes`) and weighed by stake (:mod:`tracker.proof.tally`). It imports
nothing of the tracker but :mod:`tracker.errors`, so every layer above may use its values.
"""
