"""``snapshot-tracker fetch``: the validator's side (README "Fetching a snapshot into a
ledger").

``run`` orchestrates; ``listing`` reads what is on offer (the tracker's JSON, or validators'
aliases); ``plan`` decides what to download and ``run.rerank`` prices the tracker's pairs again
with the ledger's files; ``download`` moves one archive with parallel ``Range`` requests over
the sources proven to hold the same bytes, and checks it before the rename into the ledger,
with ``workers`` (the connections that move the bytes, the state file's saves) and
``settings`` (the tunables), over the shared engine :mod:`tracker.multisource` (who fetches
which bytes, the connections, the checks of every answer: fetch keeps its policy, the engine
the mechanism); ``state`` the resumable state file; ``lock`` one fetch per ledger; ``space``
the room on the disk; ``ledger`` what the ledger directory holds and retention; ``progress``
the bar or log lines; ``flags`` the flags and exit codes; ``trust``, ``vouching`` and
``statementfiles`` the signed statements an archive needs, gathered and weighed, and on disk;
``keyfiles`` the key files of the keygen and pubkey commands.
"""
