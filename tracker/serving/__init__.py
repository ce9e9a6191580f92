"""Archives on this machine as HTTP answers: ranges, conditionals, file responses, bodies.

:mod:`~tracker.serving.ranges` parses ``Range`` and conditional headers and plans the answer
(pure); :mod:`~tracker.serving.fileresponse` answers a GET or HEAD of a regular file (opened
once, ``O_NOFOLLOW``, sent with ``sendfile`` where the connection allows);
:mod:`~tracker.serving.httpanswer` is the framework-free answer every byte path returns and
:mod:`~tracker.serving.responsebodies` the base of every streamed response body;
:mod:`~tracker.serving.threads` runs blocking reads in worker threads, and calls on a file
system that may hang in threads their callers leave on cancellation.

May import: :mod:`tracker.zerocopy`, :mod:`tracker.net`, :mod:`tracker.core`,
:mod:`tracker.errors`; not the web framework.
"""
