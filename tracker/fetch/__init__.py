"""``snapshot-tracker fetch``: the validator's side (SPEC §12).

``run`` orchestrates; ``listing`` reads what is on offer (the tracker's JSON, or validators'
aliases); ``plan`` decides what to download; ``download`` moves one archive with parallel
``Range`` requests over the sources proven to hold the same bytes; ``pieces`` is the pure
bookkeeping of who fetches which bytes; ``state`` the resumable state file; ``progress`` the
bar or log lines.
"""
