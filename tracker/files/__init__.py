"""The archive check: whether a file is the archive it claims to be.

:mod:`~tracker.files.archivecheck` checks an archive (compression layer to its end in
:mod:`~tracker.files.decoders`, tar walk in :mod:`~tracker.files.tarwalk`, both parsers of
:mod:`~tracker.files.streamparse`, its bounds in :mod:`~tracker.files.checklimits`) and returns
its SHA-256, also while it is being written; :mod:`~tracker.files.reread` reads a checked
archive again for the accounts proof; :mod:`~tracker.files.headproof` proves an archive from
its head. Answering with files is :mod:`tracker.serving`'s, accounting for downloads
:mod:`tracker.accounting`'s.

May import: :mod:`tracker.serving`, :mod:`tracker.zerocopy`, :mod:`tracker.net`,
:mod:`tracker.core`, :mod:`tracker.proof`, :mod:`tracker.errors`; not the web framework.
"""
