"""The archive check: whether a file is the archive it claims to be.

:mod:`~tracker.proof.archive.archivecheck` checks an archive (compression layer to its end in
:mod:`~tracker.proof.archive.decoders`, zstd frames in parallel threads in
:mod:`~tracker.proof.archive.framedecode`, the one reading of the tar stream in
:mod:`~tracker.proof.archive.tarwalk`, both parsers driven by
:mod:`~tracker.proof.formats.streamparse`, its bounds in
:mod:`~tracker.proof.archive.checklimits`) and returns its SHA-256, also while it is being
written; :mod:`~tracker.proof.archive.reread` reads a checked archive again for the accounts
proof, held to the bytes the check read (:mod:`~tracker.proof.archive.binding`);
:mod:`~tracker.proof.archive.headproof` proves an archive from its head. Answering with
files is :mod:`tracker.serving`'s, accounting for downloads :mod:`tracker.accounting`'s.

May import: :mod:`tracker.serving`, :mod:`tracker.net`, :mod:`tracker.core`, the proof's
lower sub-packages, :mod:`tracker.errors`; not the web framework.
"""
