"""``snapshot-tracker fetch``: the validator's side (README "Fetching a snapshot into a
ledger").

``run`` orchestrates; ``listing`` reads what is on offer (the tracker's JSON, or validators'
aliases); ``plan`` decides what to download; ``download`` moves one archive with parallel
``Range`` requests over the sources proven to hold the same bytes, and checks it before the
rename into the ledger, with ``sources`` (what each URL offers, the checks of every answer,
the comparison of samples), ``workers`` (the connections that move the bytes, the state
file's saves) and ``settings`` (the tunables), over the shared engine
:mod:`tracker.multisource` (who fetches which bytes, the connections, the checks of every
answer: fetch keeps its policy, the engine the mechanism); ``state`` the resumable state
file; ``lock`` one
fetch per ledger; ``space`` the room on the disk; ``ledger`` what the ledger directory holds
and retention; ``progress`` the bar or log lines; ``cli`` the flags, signals and exit codes.
"""
