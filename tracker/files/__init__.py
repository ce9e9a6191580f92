"""Archives on this machine as HTTP answers: ranges, conditionals, file responses, bodies.

:mod:`~tracker.files.ranges` parses ``Range`` and conditional headers and plans the answer
(pure); :mod:`~tracker.files.fileresponse` answers a GET or HEAD of a regular file (opened
once, ``O_NOFOLLOW``, sent with ``sendfile`` where the connection allows);
:mod:`~tracker.files.answers` is the framework-free answer every byte path returns and
:mod:`~tracker.files.bodies` the base of every streamed response body;
:mod:`~tracker.files.threads` runs blocking reads in worker threads;
:mod:`~tracker.files.downloads` accounts for every archive body (metrics, one log line);
:mod:`~tracker.files.archivecheck` checks an archive (compression layer to its end in
:mod:`~tracker.files.decoders`, tar walk in :mod:`~tracker.files.tarwalk`, both parsers of
:mod:`~tracker.files.streamparse`, its bounds in :mod:`~tracker.files.checklimits`) and returns
its SHA-256, also while it is being written.

May import: :mod:`tracker.zerocopy`, :mod:`tracker.net`, :mod:`tracker.core`,
:mod:`tracker.errors`; not the web framework.
"""
