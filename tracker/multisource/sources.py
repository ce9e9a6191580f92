"""The sources of one download, as the engine sees them, what each answer must prove, and
how a download used them (:class:`SourcesUsed`).

A :class:`Source` is one URL of a file of known size (its :class:`Identity`: the size and the
validators it was first sent with) and what it delivered so far. Which sources may be used
together is the caller's policy (``fetch`` samples their bytes, the cache's refresh takes
the index's copies of the same name, size and published SHA-256: docs/http-api.md#trust);
the engine only checks every answer against the source it came from: the range asked, of the
same size, not provably another file (:func:`check_range`, :func:`check_whole`; the one
"same file" rule is :mod:`tracker.multisource.samefile`). A failing answer raises
:class:`~tracker.errors.SourceFailed` with a one-line reason that starts with the URL.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import attrs
import httpx
import trio

from tracker.core.snapshots import TargetKey
from tracker.errors import SourceFailed
from tracker.multisource.contentrange import ContentRange, states_range
from tracker.multisource.samefile import Sameness, Validators, sameness
from tracker.net.exchange import coding_problem
from tracker.net.httpclients import origin
from tracker.observability.logs import log_event
from tracker.observability.redact import redact_text

log = logging.getLogger("tracker.multisource")


@attrs.frozen
class Identity:
    """What makes two answers the same file: its size and the validators it was sent with."""

    size: int
    etag: str = ""
    last_modified: str = ""

    @property
    def validators(self) -> Validators:
        """The validators the file was sent with."""
        return Validators(self.etag, self.last_modified)

    def same_file(self, other: Identity) -> bool:
        """True when ``other`` is provably this file: the same size, and validators that
        prove it (:func:`tracker.multisource.samefile.sameness`); with no validator in common they
        are not provably the same."""
        return self.size == other.size and (
            sameness(self.validators, other.validators) is Sameness.SAME
        )


@attrs.define(eq=False)
class Source:
    """One URL of the file, as inspected, and what it delivered."""

    url: str
    identity: Identity
    #: Whether its answers honour ``Range`` (the refresh starts with True and learns
    #: otherwise from its first answer to a ``Range`` request: :meth:`Source.ignores_range`).
    ranges: bool
    sent: int = 0
    failures: int = 0
    dropped: str = ""
    #: When (trio time) it was dropped (None: it was not): its part of the download ended
    #: then (a refresh measures it over that part, docs/ranking.md, "Failed transfers").
    dropped_at: float | None = None
    #: Every failure of its latest row was a busy answer (503, 429: SourceOverloaded): dropped
    #: so, it was not failing, and its part ended on our side (docs/ranking.md, "Busy
    #: answers").
    busy: bool = False
    #: Why it gives no (more) pieces though it did not fail ("" while it may): it ignores
    #: ``Range``, and its one stream, if it had one, ended.
    left_out: str = ""
    #: One of its answers honoured ``Range`` (a checked 206), or a request that would tell
    #: is out (``probing``): until one of those, it gets one request at a time.
    ranges_shown: bool = False
    probing: bool = False
    scopes: set[trio.CancelScope] = attrs.Factory(set)
    #: Its requests that found no free transfer slot of its origin (SourceBusy): a speed
    #: window in which one did judges it not (it waited for a slot, it was not asked).
    slot_waits: int = 0
    #: The caller's own handle of the source (the refresh: its index entry), never read here.
    tag: object = None
    #: The event logged when the source is dropped (each caller logs under its own name).
    drop_event: str = "fetch_source_dropped"
    #: The validators of each other origin the source redirected to (a tracker's bucket: its
    #: presigned URLs answer with the store's own ETag and date), first seen there.
    elsewhere: dict[tuple[str, str, int | None], Identity] = attrs.Factory(dict)
    #: The URL it was listed at when redirects led to ``url`` ("": ``url`` itself): asked
    #: again by ``fetch`` when ``url`` stops answering (a presigned URL expired).
    listed_at: str = ""

    def identity_of(self, response: httpx.Response) -> Identity:
        """The identity ``response`` is held to: the source's own, or, for an answer a
        redirect brought from another origin, that origin's first answer's. A tracker hands
        out the same archive from its relay and, once uploaded, from its bucket, each with
        validators of its own (docs/http-api.md, "With an object store"): proven different by
        validators only within one origin, the whole-file check and the published SHA-256 still
        judging the bytes."""
        if not response.history:
            return self.identity
        where = origin(str(response.url))  # httpx parsed it: the port is a number
        if where == origin(self.url):
            return self.identity
        known = self.elsewhere.get(where)
        if known is None:
            headers = response.headers
            known = Identity(
                self.identity.size, headers.get("etag", ""), headers.get("last-modified", "")
            )
            self.elsewhere[where] = known
        return known

    @property
    def state(self) -> str:
        """How the download uses it, in a few words: "" while it gives pieces, else dropped,
        left out (and why) or read as one stream (it ignores ``Range``)."""
        if self.dropped:
            return f"dropped: {self.dropped}"
        if self.left_out and not self.sent:
            return f"left out: {self.left_out}"
        if not self.ranges:
            return "one stream: it ignores Range"
        return ""

    @property
    def live(self) -> bool:
        """True while it may still give bytes: not dropped, not left out."""
        return not self.dropped and not self.left_out

    def ignores_range(self, status: int) -> None:
        """It answered a ``Range`` request with the whole file (``status``, a 200: agave's
        RPC, a plain file server): read as one stream from now on, never asked for a piece
        again (docs/architecture.md, "A refresh from several sources")."""
        if self.ranges:
            self.ranges = False
            log_event(log, "info", "source_ignores_range", url=self.url, status=status)

    def drop(self, reason: str) -> None:
        """Stop using this source; its running requests are cancelled (their pieces return)."""
        if not self.dropped:
            self.dropped, self.dropped_at = reason, trio.current_time()
            log_event(log, "warning", self.drop_event, url=self.url, reason=reason)
        for scope in self.scopes:
            scope.cancel()

    def adopt_validators(self, response: httpx.Response) -> None:
        """Take the validators of ``response`` as the source's when it had none yet (its
        first answer): every later answer must then not be provably another file."""
        if not (self.identity.etag or self.identity.last_modified):
            headers = response.headers
            self.identity = Identity(
                self.identity.size, headers.get("etag", ""), headers.get("last-modified", "")
            )


def check_range(response: httpx.Response, source: Source, start: int, end: int) -> None:
    """A 206 of exactly the bytes asked, of the file the source was inspected with."""
    if response.status_code != 206:
        raise SourceFailed(f"{source.url}: answered {response.status_code} to a range")
    if (coded := coding_problem(response)) is not None:
        raise SourceFailed(f"{source.url}: {coded}")
    got = response.headers.get("content-range", "").strip()
    if not states_range(got, start, end - 1, source.identity.size):
        expected = ContentRange(start, end - 1, source.identity.size).text()
        raise SourceFailed(f"{source.url}: content-range {got!r}, expected {expected!r}")
    if not same_validators(response, source.identity_of(response)):
        raise SourceFailed(f"{source.url}: the file changed (etag or last-modified)")


def check_whole(response: httpx.Response, source: Source) -> None:
    """A 200 of the whole file the source was inspected with (a source without ranges)."""
    if response.status_code != 200:
        raise SourceFailed(f"{source.url}: status {response.status_code}")
    if (coded := coding_problem(response)) is not None:
        raise SourceFailed(f"{source.url}: {coded}")
    length = response.headers.get("content-length", "").strip()
    if length != str(source.identity.size):
        raise SourceFailed(
            f"{source.url}: content-length {length or 'missing'}, expected {source.identity.size}"
        )
    if not same_validators(response, source.identity_of(response)):
        raise SourceFailed(f"{source.url}: the file changed (etag or last-modified)")


def same_validators(response: httpx.Response, identity: Identity) -> bool:
    """False when the answer's validators prove it is another file than ``identity``
    (:func:`tracker.multisource.samefile.sameness`: different, not merely unproven; the size is
    checked anyway). Checked on every answer rather than asked with ``If-Range``, which a
    tracker's change of ETag (its cache's own) would turn into a whole-file 200.
    """
    found = Validators.of(response.headers)
    return sameness(identity.validators, found) is not Sameness.DIFFERENT


#: How a refresh used a source (``/v1/targets`` ``refresh.used``).
Used = Literal["parallel", "alone", "left out", "dropped"]


def uses_of(sources: Sequence[Source]) -> list[tuple[Used, str]]:
    """How a refresh used each of its ``sources`` (the first first) and why, once it
    ended: in parallel with others, alone (the only one that gave bytes: the others ignore
    Range, or failed), left out (it gave nothing: it ignores Range, so it could only have
    sent the whole file again) or dropped (failed, stalled or too slow)."""
    givers = sum(1 for s in sources if s.sent)
    out: list[tuple[Used, str]] = []
    for source in sources:
        if source.dropped:
            out.append(("dropped", source.dropped))
        elif not source.sent:
            out.append(("left out", source.left_out or "no piece was left for it"))
        elif givers == 1:
            out.append(("alone", "" if source.ranges else "one stream: it ignores Range"))
        else:
            out.append(("parallel", "" if source.ranges else "one stream: it ignores Range"))
    return out


#: Targets whose latest use is kept (a fleet's discovered nodes are thousands).
MAX_USES = 4096


class SourcesUsed:
    """How the latest refresh from several sources that asked each target used it
    (docs/http-api.md, ``/v1/targets``: ``refresh``); at most MAX_USES targets, the
    oldest forgotten first."""

    def __init__(self) -> None:
        self._uses: dict[TargetKey, dict[str, object]] = {}

    def record(self, name: str, keys: Sequence[TargetKey], sources: Sequence[Source]) -> None:
        """The refresh of ``name`` used ``sources`` (of targets ``keys``, in order)."""
        for key, source, (used, reason) in zip(keys, sources, uses_of(sources), strict=True):
            entry: dict[str, object] = {"file": name, "used": used, "bytes": source.sent}
            if reason:
                entry["reason"] = redact_text(reason)
            self._uses.pop(key, None)  # the newest last
            self._uses[key] = entry
        while len(self._uses) > MAX_USES:
            del self._uses[next(iter(self._uses))]

    def shown(self) -> dict[TargetKey, dict[str, object]]:
        """Each target's latest use (a copy)."""
        return dict(self._uses)
