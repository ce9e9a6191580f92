"""Ranking measurements (docs/http-api.md, "Speed tests"): :mod:`tracker.measuring.rangereads`
reads the first bytes of the leading fulls of each group's best sources, within their
``source_limits``, and records the probed throughput the ranking weighs (which sources are due
is the pure :mod:`tracker.measuring.speedtests`; how probed and achieved figures combine,
:mod:`tracker.ordering.sourcehistory`). The live rate of transfers is
:mod:`tracker.ordering.sourcehistory.Flowing`."""
