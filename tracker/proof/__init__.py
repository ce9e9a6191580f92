"""Archives proven, not just well formed: the proof in one tree (docs/architecture.md,
"Proven archives" and "Packages and their layers").

Everything that decides or runs how far an archive is proven lives under this package, in
sub-packages by topic. Each sits at the layer of what it uses, so the pure parts stay below
everything and the executors above what they drive (import-linter checks it):

- :mod:`tracker.proof.levels`: the levels and the value of what was proven (bottom);
- :mod:`tracker.proof.formats`: agave's formats read and written (bincode, the manifest, the
  account storages, the lattice and bank hashes, vote instructions and their tally) and the
  per-archive prover the tar walk feeds;
- :mod:`tracker.proof.accounts`: the accounts level (the index of the newest versions, its
  spill past the memory budget, the hash workers, the second read's decisions);
- :mod:`tracker.proof.statements`: signed statements of what was proven;
- :mod:`tracker.proof.records`: what a held or local copy is proven to and what is signed
  of it (above :mod:`tracker.core`'s digests);
- :mod:`tracker.proof.archive`: the archive check over the tar stream and its second read,
  the proof from an archive's head;
- :mod:`tracker.proof.cluster`: the cluster's votes asked of the RPCs, and the cache's copies
  lifted by them;
- :mod:`tracker.proof.background`: the proofs that run on their own (redirect mode's head
  reads, local files), above the proxy and the cache whose parts they use.

The face its clients (the cache, the validator's download, the object store, the web layer,
the composition root) use is small: the levels' values (:mod:`tracker.proof.levels`), the
archive check (:mod:`tracker.proof.archive.archivecheck`, the head proof
:mod:`tracker.proof.archive.headproof`), the shared memory budget
(:mod:`tracker.proof.accounts.budget`), the statements and records, the cluster's voter and
lifting, and the background rounds. The formats and the accounts level's insides are the
tree's own (tests/unit/test_proof_face.py keeps it so).
"""
