"""Accounting around every archive download (:mod:`~tracker.accounting.downloads`): one log
line at its end, the active-streams gauge, the download slots.

May import: :mod:`tracker.serving`, :mod:`tracker.zerocopy`, :mod:`tracker.net`,
:mod:`tracker.core`, :mod:`tracker.errors`; not the web framework.
"""
