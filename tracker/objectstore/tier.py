"""What this replica knows of the shared bucket, and what it does there
(docs/http-api.md#with-an-object-store-object_store).

Keys (:mod:`~tracker.objectstore.keys`): the archive ``name`` of ``group`` is
``{prefix}{group}/{name}``, next to its digest ``{name}.sha256``, proof ``{name}.proof`` and
statement ``{name}.attestation`` (:mod:`~tracker.objectstore.sides`); its refresh lock is
``{prefix}.locks/{group}/{name}.lock`` (:mod:`~tracker.objectstore.locks`), the mark of its
last hand-out ``{prefix}.handed/{group}/{name}.handed``. Every listing keeps archive keys
only. A presigned URL is reused for a quarter of its life and the mark is rewritten with
each new URL, signed to expire ``direct_serve_ttl`` after the mark on the store's clock
(:func:`~tracker.objectstore.retention.url_life`), so every URL handed out by any replica
expires before ``mark + direct_serve_ttl``; retention (:mod:`~tracker.objectstore.retainer`)
deletes nothing younger, and runs again at the moment the object it held back may go. What
this replica knows of the objects, and for how long, is :mod:`~tracker.objectstore.known`'s;
what it does at start-up :mod:`~tracker.objectstore.startup`'s.

Nothing here raises for the store being down: the caller then uses another path. What a
request waits for (lookup, lock, hand-out) and the health check go through
:meth:`~tracker.objectstore.bucket.Bucket.on_request_path` (``request_timeout``); while the
store is down only :meth:`ObjectTier.watch` asks it.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from tracker.config.schema import ObjectStore
from tracker.core.digests import BUCKET, Digests, Verified
from tracker.core.snapshots import parse_archive_name
from tracker.errors import StoreConflict, StoreError
from tracker.objectstore import keys
from tracker.objectstore.known import Known
from tracker.objectstore.locks import LAPSE, RENEW_EVERY, Holder, Lock, acquire
from tracker.objectstore.retainer import LIST_AGAIN, Retainer
from tracker.objectstore.retention import ahead_of, url_life
from tracker.objectstore.sides import (
    Reads,
    read_copy,
    reread,
    restate,
    side_objects,
    statement_there,
)
from tracker.objectstore.startup import abort_uploads, start_up
from tracker.objectstore.storeanswers import ObjectInfo
from tracker.objectstore.upload import Growing, upload_following
from tracker.observability.logs import log_event
from tracker.observability.redact import redact_url
from tracker.proof.records.attestations import Attestations
from tracker.serving.ranges import http_date, parse_http_date, sent_last_modified

if TYPE_CHECKING:  # not at run time: an idle tracker never loads cryptography
    from tracker.objectstore.bucket import Bucket
    from tracker.proof.statements import Attestation

log = logging.getLogger("tracker.objectstore")

#: Seconds between checks of the store's health (:meth:`ObjectTier.watch`).
CHECK_EVERY = 5.0
#: Known objects the health watcher tries to read a byte of, newest first.
PROBED = 3
#: Seconds a lock this replica gives back (its upload ended, or a takeover whose uploads
#: could not be aborted) is given to be released, however that ended; past them it expires.
RELEASE_WITHIN = 10.0


def _nothing(*_args: object) -> None:
    return None


@attrs.frozen
class TierEvents:
    """Callbacks for metrics (synchronous, cheap)."""

    redirect: Callable[[], None] = _nothing
    upload: Callable[[str], None] = _nothing  # "ok" | "failed"
    takeover: Callable[[], None] = _nothing
    error: Callable[[str], None] = _nothing  # the operation
    refused: Callable[[str], None] = _nothing  # "proof" | "attestation" read back


class ObjectTier:
    """This replica's side of the shared bucket; made by the service when configured."""

    def __init__(
        self,
        store: ObjectStore,
        bucket: Bucket,
        events: TierEvents | None = None,
        digests: Digests | None = None,
    ) -> None:
        self.store = store
        self.bucket = bucket
        #: The same bucket for calls a client waits for: a deadline of ``request_timeout``.
        self.quick = bucket.on_request_path()
        self.events = events if events is not None else TierEvents()
        #: This process's id in the locks it holds.
        self.owner = secrets.token_hex(8)
        #: The objects, misses, URLs and digests this replica knows.
        self.known = Known()
        self.uploads_running = 0
        #: Told every digest of an object this replica knows (the JSON's ``sha256``).
        self.digests = digests if digests is not None else Digests()
        #: Signs the statement written beside each upload (the service's; signs nothing
        #: without ``attest``).
        self.attestations = Attestations(self.digests)
        #: What the check of each upload in flight said, by key, until it completed.
        self._uploading: dict[str, Verified] = {}
        #: The statement last written beside each archive this replica uploaded, by key.
        self._stated: dict[str, Attestation] = {}
        #: The ETag of each of those uploads that completed, and of each object whose
        #: statement this replica took over (:meth:`take_over`), by key: a statement is
        #: written again only beside that object (:func:`restate`).
        self._uploaded: dict[str, str] = {}
        #: The bucket copies :meth:`take_over` read the statement beside, by key: the
        #: object's ETag and the statement held then (read again only once either changed).
        self._looked: dict[str, tuple[str, Attestation | None]] = {}
        #: The statements read beside other replicas' uploads, read again (:func:`reread`).
        self._reads: Reads = {}
        self.retainer = Retainer(store, bucket, self.known, self.digests, self._failed)
        #: Health checks done (:meth:`watch`).
        self.probes = 0
        #: This replica's clock (Unix seconds): the one presigned URLs are signed on.
        self.wall: Callable[[], float] = time.time
        #: Whether this clock's running too far ahead for a URL was logged (:meth:`_clock_off`).
        self._clock_said = False

    # -- keys ----------------------------------------------------------------------------

    def object_key(self, group: str, name: str) -> str:
        return keys.archive_key(self.store.prefix, group, name)

    def lock_key(self, group: str, name: str) -> str:
        return keys.lock_key(self.store.prefix, group, name)

    def mark_key(self, group: str, name: str) -> str:
        return keys.mark_key(self.store.prefix, group, name)

    @property
    def usable(self) -> bool:
        """False while the store is down (between retries)."""
        return self.bucket.health.usable()

    # -- reading -------------------------------------------------------------------------

    async def lookup(self, group: str, name: str) -> ObjectInfo | None:
        """The object of ``name`` when the bucket has it; None when not (or the store is
        down)."""
        key = self.object_key(group, name)
        known = self.known.fresh(key)
        if known is not None:
            return known
        if self.known.missed_lately(key) or not self.usable:
            return None
        try:
            info = await self.quick.head(key)
        except StoreError as exc:
            self._failed("HEAD", exc)
            return None
        self.known.remember(key, info)
        if info is not None:
            self._list_again(group, name)
        return info

    def _list_again(self, group: str, name: str) -> None:
        """Have retention list ``name``'s group and kind again within LIST_AGAIN seconds: what
        this replica learned of there is forgotten once another replica's retention deleted
        it, though this one uploads nothing there (docs/replicas.md)."""
        parsed = parse_archive_name(name)
        if parsed is not None:
            self.retainer.schedule(group, parsed.is_full, LIST_AGAIN)

    async def digest(self, group: str, name: str, info: ObjectInfo) -> str | None:
        """The hex SHA-256 of object ``info`` of ``name`` from its digest object, asked once
        per object version (an answer without one is remembered too; read again once the
        statement beside it expired, or once one refused for being checked ahead of this
        clock may be taken); None when it has none, or after a failure of the store until it
        reads again (unknown is the safe answer)."""
        key = info.key
        known = self.known.sum(key, info.etag)
        if (
            known is not None
            and not self._statement_expired(group, name)
            and not self.known.dated_due(key, info.etag, time.time())
        ):
            return known or None
        health = self.bucket.health
        if health.last_error and not health.reads_proven:
            return None  # back from a failure, not reading yet: the digest stays unknown
        ahead: list[float] = []  # a statement checked ahead of this clock: when to take it
        try:
            copy = await read_copy(
                self.quick, key, info.size, time.time(), self.events.refused, ahead.append
            )
        except StoreError as exc:
            self._failed("GET", exc)
            return None
        self.known.keep_sum(key, info.etag, copy.sha256 if copy is not None else "")
        self.known.keep_dated(key, info.etag, ahead[0] if ahead else None)
        if copy is None:
            return None
        self.digests.hold(BUCKET, group, name, copy)
        return copy.sha256

    def _statement_expired(self, group: str, name: str) -> bool:
        """True when the statement read beside ``name``'s object expired: read it again (its
        replica wrote a new one at half its life)."""
        now = time.time()
        held = self.digests.copies(group, name)
        return any(v.attestation and v.attestation.statement.expires <= now for v in held)

    async def handout(self, group: str, name: str) -> str | None:
        """A presigned GET URL of the object for a client; None when it cannot be given (not
        in the bucket any more, store down, signing failed). No URL is handed out before a
        GET of stored bytes worked since the store last failed (this object's first byte when
        the health watcher has not read one yet)."""
        key = self.object_key(group, name)
        now = trio.current_time()
        cached = self.known.url(key)
        health = self.bucket.health
        if cached is not None and health.up and health.reads_proven:
            self.events.redirect()
            return cached
        ttl = self.store.direct_serve_ttl
        try:
            # Still there? (another replica's retention); and the store's clock beside ours
            info, store_now = await self.quick.head_dated(key)
            if info is not None and not health.reads_proven:
                info = info if await self.quick.read_first_byte(key) else None
            self.known.remember(key, info)
            if info is None:
                return None
            # The URL is signed on our clock and judged on the store's: it is signed to
            # expire ttl after the mark on the store's clock, whoever writes the next mark
            ahead = ahead_of(self.wall(), store_now.timestamp())
            life = url_life(ttl, ahead)
            if life is None:
                self._clock_off(ahead)
                return None
            self._clock_said = False
            marking, mark = trio.current_time(), self.mark_key(group, name)
            await self.quick.put(mark, b"")
            # after the mark, never before: retention marks an archive retiring, then reads
            # the marks again (tracker.objectstore.retainer)
            if await self.quick.head(keys.retiring_key(self.store.prefix, group, name)):
                return None  # the mark is shared: it may hold another replica's URL
            # and the object again: a retention that ran from start to end between the
            # first look and the mark deleted it, its retiring mark with it. The mark written
            # here goes too (it stayed for good, nothing deletes a mark of no archive, and a
            # later upload of the name read it as a hand-out); no URL of a gone object is
            # live, whoever handed it out
            if await self.quick.head(key) is None:
                self.known.remember(key, None)
                await self.quick.tidy(mark)
                return None
            # Signed now, not at the mark: the seconds since it was sent come off the URL's
            # life, which must end before the mark's date + direct_serve_ttl (a store
            # answering slowly, within request_timeout, made it outlive retention's hold).
            life -= trio.current_time() - marking
            if life < 1:
                return None
            url = self.bucket.presign_get(key, int(life), file_name=name)
        except StoreError as exc:
            self._failed("handout", exc)
            return None
        self.known.keep_url(key, url, now + life / 4)
        self.events.redirect()
        return url

    def internal_url(self, group: str, name: str) -> str | None:
        """A short-lived presigned URL for the tracker's own streaming of the object."""
        try:
            return self.bucket.presign_get(self.object_key(group, name), 3600, public=False)
        except StoreError as exc:
            self._failed("presign", exc)
            return None

    # -- refreshing ----------------------------------------------------------------------

    async def claim(self, group: str, name: str) -> Lock | Holder | ObjectInfo | None:
        """Take the refresh lock of ``name``: the Lock, the live Holder, the object itself
        when it landed meanwhile (the lock free because its upload completed: it is let go
        at once, no refresh pulls the file again), or None when the store cannot be used
        (down, or no answer within ``request_timeout``). A lock taken over from a dead
        replica has that replica's incomplete uploads of the key aborted first, and the
        object looked for (a holder whose lease ran out may have completed it)."""
        if not self.usable:
            return None
        store = self.store
        key = self.lock_key(group, name)
        try:
            got = await acquire(self.quick, key, self.owner, store.replica_url, store.lock_ttl)
        except StoreError as exc:
            self._failed("lock", exc)
            return None
        if not isinstance(got, Lock):
            return got
        got.bucket = self.bucket  # renewals run beside the refresh, not on a request
        try:
            if not got.took_over:
                stored = await self._landed(group, name)
            else:
                self.events.takeover()
                log_event(log, "warning", "object_lock_taken_over", group=group, file=name)
                # on the request path: each call within request_timeout (a client waits)
                await abort_uploads(self.quick, self.store, self.object_key(group, name))
                # a holder whose lease ran out as it completed its upload (a complete on its
                # way when the store went quiet) may have landed the object after all
                stored = await self._landed(group, name)
        except BaseException as exc:
            # Not aborted or the object not looked for (the store failed or was slow), or
            # the request left while the lock was ours: no upload may start beside the dead
            # holder's nor over an object it may have completed, and a lock kept sends the
            # other replicas to this one for lock_ttl while it refreshes nothing.
            await let_go(got)
            if isinstance(exc, StoreError):
                self._failed("lock", exc)
                return None
            raise
        if stored is not None:  # landed as the lock came free: no refresh pulls it again
            await let_go(got)
            return stored
        return got

    async def _landed(self, group: str, name: str) -> ObjectInfo | None:
        """The object of ``name`` when it is in the bucket after all: the lock was free
        because the replica that held it completed the upload and let it go, after this
        request's lookup missed (a miss is remembered for a second). None when it is not;
        StoreError when the store does not say: :meth:`claim` lets the lock go (a refresh
        under it uploaded over the verified object the slow answer would have shown, its
        digest and statement replaced first, a presigned URL handed out serving other
        bytes)."""
        key = self.object_key(group, name)
        info = await self.quick.head(key)
        if info is not None:
            self.known.remember(key, info)  # the request's next lookup finds it
        return info

    async def keep_renewed(self, lock: Lock, lost: trio.Event) -> None:
        """Renew ``lock`` every sixth of ``lock_ttl`` (from one renewal's sending to the
        next) until cancelled; sets ``lost`` and returns when another replica took it over,
        or when no renewal was applied within ``lock_ttl`` after its lease ended (a store
        that hangs: docs/replicas.md, "Locks and leases"; the refresh's upload is then
        aborted). A renewal answered late, past the lease, keeps the lock: its ``If-Match``
        held, so nobody took it over, and the upload's complete waited for it. A store that
        fails is asked again, sooner."""
        every = self.store.lock_ttl * RENEW_EVERY
        lapse = self.store.lock_ttl * LAPSE
        due = trio.current_time() + every
        while True:
            # past the lease, a failing store is asked again every twelfth, not at once
            await trio.sleep_until(min(due, lock.lease_end) if lock.held else due)
            sent = trio.current_time()
            with trio.move_on_at(lock.lease_end + lapse):
                try:
                    await lock.renew()
                except StoreConflict:
                    log_event(log, "warning", "object_lock_lost", key=lock.key)
                    lost.set()
                    return
                except StoreError as exc:
                    self._failed("lock", exc)
                    due = trio.current_time() + every / 2
                else:
                    due = sent + every
            if trio.current_time() >= lock.lease_end + lapse:
                log_event(
                    log, "warning", "object_lock_lost", key=lock.key,
                    reason="no renewal applied within lock_ttl after its lease",
                )  # fmt: skip
                lost.set()
                return

    async def _abort_strays(self, key: str, lock: Lock) -> None:
        """Abort the incomplete uploads of ``key`` left beside the one the refresh under
        ``lock`` made (its own is completed or aborted by then): a create whose answer was
        lost, sent again by boto3, began an upload nobody would ever complete or abort,
        its parts kept (and billed) until a restart's clean-up. Only while ``lock``'s lease
        lasts: past it another replica may hold the lock and be uploading."""
        if not lock.held:
            return
        try:
            await abort_uploads(self.bucket, self.store, key)
        except StoreError as exc:
            if not exc.denied:  # a refusal is logged once, not after every upload
                self._failed("abort", exc)

    def upload_metadata(self, headers: dict[str, str]) -> dict[str, str]:
        """The object's metadata: the upstream's ``last-modified``, kept for HEAD answers,
        never later than now (none when it is no HTTP-date: docs/http-api.md#archive-answers)."""
        # in its canonical form: a date the parser takes may carry junk around it (a
        # source's "... GMTé"), and a byte of metadata that is no ASCII is refused by the
        # store's client before it sends: the upload failed and the store was marked down
        seconds = parse_http_date(sent_last_modified(headers.get("last-modified"), time.time()))
        return {"upstream-last-modified": http_date(seconds)} if seconds is not None else {}

    async def upload(
        self,
        key: str,
        fd: int,
        growing: Growing,
        metadata: dict[str, str],
        lock: Lock | None = None,
    ) -> ObjectInfo:
        """Upload ``growing`` to ``key`` (:func:`~tracker.objectstore.upload.upload_following`)
        with its digest, proof and this replica's statement beside it; under ``lock`` (a
        refresh's), the key's stray uploads are aborted after it, whether it landed or
        failed (:meth:`_abort_strays`)."""

        group, _slash, name = key.removeprefix(self.store.prefix).partition("/")

        def sides(growing: Growing) -> list[tuple[str, bytes]]:
            now = time.time()  # the check ended with the last byte, just before
            checked = Verified(growing.sha256, growing.proof, growing.size, now)
            self._uploading[key] = checked
            signed = self.attestations.sign(group, name, checked, now)
            if signed is not None:
                self._stated[key] = signed
            return side_objects(key, checked, signed.encode() if signed is not None else None)

        try:
            info = await upload_following(
                self.bucket, key, fd, growing, metadata, sides,
                lock.until_held if lock is not None else None,
            )  # fmt: skip
        except BaseException as exc:
            self._uploading.pop(key, None)
            self._stated.pop(key, None)
            self._uploaded.pop(key, None)
            self.attestations.forget(group, name, BUCKET)  # no object: nothing to restate
            if lock is not None and isinstance(exc, (StoreError, OSError)):
                await self._abort_strays(key, lock)
            raise
        if lock is not None:
            await self._abort_strays(key, lock)
        return info

    async def completed(self, group: str, name: str, info: ObjectInfo, sha256: str = "") -> None:
        """An upload of ``name`` (of digest ``sha256``) completed: remember it, then apply
        retention."""
        self.known.remember(info.key, info)
        self._uploaded[info.key] = info.etag
        checked = self._uploading.pop(info.key, None)
        if sha256:
            self.known.keep_sum(info.key, info.etag, sha256)
            if checked is None or checked.sha256 != sha256:
                checked = Verified(sha256)
            self.digests.hold(BUCKET, group, name, checked)
        self.events.upload("ok")
        log_event(log, "info", "object_uploaded", group=group, file=name, size=info.size)
        parsed = parse_archive_name(name)
        if parsed is not None:
            await self.retain(group, full=parsed.is_full)
            # this retention keeps what it just uploaded (too recent to be judged gone): a
            # later one forgets it once another replica's retention deleted it
            self._list_again(group, name)

    async def retain(self, group: str, *, full: bool) -> None:
        """Apply retention to ``group``'s archives of one kind
        (:meth:`~tracker.objectstore.retainer.Retainer.retain`)."""
        await self.retainer.retain(group, full=full)

    async def retire_when_due(self) -> None:
        """Run retention again whenever an archive it held back may go, until cancelled."""
        await self.retainer.retire_when_due()

    # -- start-up ------------------------------------------------------------------------

    async def startup(self) -> None:
        """Learn what the bucket holds and clean up after dead replicas
        (:func:`~tracker.objectstore.startup.start_up`), then read what lies beside each
        archive (:meth:`digest`: the digests, proofs and statements the listings show).
        Never raises."""
        await start_up(self.store, self.bucket, self.known, self.retainer, self._failed)
        for key in self.known.newest(len(self.known)):
            archive, info = keys.archive_of(self.store.prefix, key), self.known.fresh(key)
            if archive is not None and info is not None:
                await self.digest(archive.group, archive.name, info)

    async def watch(self, every: float = CHECK_EVERY) -> None:
        """Check the store every ``every`` seconds until cancelled, so that a store that went
        down stops getting clients redirected to it (URLs are reused between calls) and one
        that came back gets them again (:meth:`probe`); write this replica's statements
        signed again beside its uploads (:func:`restate`) and read others' again
        (:func:`reread`)."""
        while True:
            try:
                await self.probe()
                await self.take_over()  # this replica's statements nobody renews any more
                self.attestations.sync(time.time())  # statements signed again go out
                await self._restate()
                # Others' statements past half their life read again: their renewals served.
                refused = self.events.refused
                await reread(
                    self.bucket, self.store.prefix, self.digests, self._reads, time.time(), refused
                )
            except StoreError as exc:
                self._failed("check", exc)
            self.probes += 1
            await trio.sleep(every)

    async def take_over(self) -> None:
        """Renew from now on the statement beside each bucket copy this replica did not
        upload in this process where :func:`~tracker.proof.records.attesting.takes_over`
        says so: a statement of its own key that nobody renews (its uploader restarted, and
        a restart forgets which objects were its uploads; or it stopped), of bytes this
        replica checked itself (its disk cache's copy, a local file). The copy is then held
        as its own check's, signed by :attr:`attestations` and written by :func:`restate`
        beside that object (the version whose digest it read) as beside an upload of its
        own. The statement there is read (expired ones too) only when what is held says it
        may be taken over, once per object version and statement held (again after a read
        the store failed). Raises StoreError when the store failed."""
        signing = self.attestations.public_key
        held = self.digests.held()
        keys_held = {self.object_key(g, n) for g, n, holder, _v in held if holder == BUCKET}
        for key in [key for key in self._looked if key not in keys_held]:
            del self._looked[key]  # no longer held: forgotten, or retention deleted it
        if signing is None:
            return
        from tracker.proof.records.attesting import NO_STATEMENT, takes_over  # signing

        own: dict[tuple[str, str, str, int], Verified] = {}  # the best of each bytes
        for group, name, holder, copy in held:
            of_bytes = (group, name, copy.sha256, copy.size)
            best = own.get(of_bytes)
            if holder != BUCKET and (best is None or copy.proof.level > best.proof.level):
                own[of_bytes] = copy
        valid_for = self.attestations.valid_for
        for group, name, holder, copy in held:
            key = self.object_key(group, name)
            # The version whose digest this copy is (seen at start-up or a lookup, maybe
            # long ago: restate's HEAD shows it is still there before anything is written).
            etag = self.known.digested(key)
            if holder != BUCKET or key in self._uploaded or not etag:
                continue
            mine = own.get((group, name, copy.sha256, copy.size))
            why = takes_over(signing, copy.attestation, name, copy, mine, time.time(), valid_for)
            looked = (etag, copy.attestation)
            if why not in ("", NO_STATEMENT) or self._looked.get(key) == looked:
                continue
            there, _etag = await statement_there(self.bucket, key, (copy.size, copy.sha256))
            # looked at once read: a read the store failed is made again at the next round
            # (marked before it, the statement nobody renewed was never read again)
            self._looked[key] = looked
            if takes_over(signing, there, name, copy, mine, time.time(), valid_for):
                continue
            assert mine is not None  # takes_over: checked here
            self._uploaded[key] = etag
            checked = Verified(copy.sha256, mine.proof, copy.size, mine.checked_at)
            self.digests.hold(BUCKET, group, name, checked)
            log_event(log, "info", "bucket_attestation_taken_over", key=key)

    async def _restate(self) -> None:
        """Write this replica's statements signed again beside its uploads (:func:`restate`);
        forget each upload whose object is gone or another replica's upload of the name
        (other bytes): its digest, proof and statement are no longer this object's."""
        prefix = self.store.prefix
        replaced = await restate(
            self.bucket, prefix, self.attestations, self._stated, self._uploaded
        )
        for key, why in replaced.items():
            self.known.forget(key)
            self._stated.pop(key, None)
            self._uploaded.pop(key, None)
            archive = keys.archive_of(prefix, key)
            if archive is not None:
                self.digests.drop(BUCKET, archive.group, archive.name)
                self.attestations.forget(archive.group, archive.name, BUCKET)
            log_event(log, "info", "object_replaced", key=key, reason=why)

    async def probe(self) -> None:
        """Ask the store whether it serves stored bytes: a GET of the first byte of an
        object this replica knows (the newest first, at most :data:`PROBED` of them: one may
        have been deleted by another replica's retention); the bucket's HEAD when it knows
        none. A HEAD or a listing is not enough: a store that comes back answers those before
        it can read what it stored. Raises StoreError when the store failed."""
        for key in self.known.newest(PROBED):
            if await self.quick.read_first_byte(key):
                return
            self.known.remember(key, None)
        await self.quick.check()

    # -- status --------------------------------------------------------------------------

    def _clock_off(self, ahead: int) -> None:
        """No URL: this replica's clock runs ``ahead`` seconds ahead of the store's, more
        than half of ``direct_serve_ttl`` (said once until a URL can be signed again)."""
        if not self._clock_said:
            self._clock_said = True
            log_event(
                log,
                "warning",
                "object_store_clock_off",
                ahead_s=ahead,
                reason="this clock runs ahead of the store's by more than half of "
                "direct_serve_ttl: no presigned URLs, the tracker serves the bytes",
            )

    def _failed(self, operation: str, exc: StoreError) -> None:
        self.events.error(operation)
        log_event(log, "warning", "object_store_error", operation=operation, reason=str(exc))

    def status(self) -> dict[str, Any]:
        """The store's health for ``/v1/store``."""
        health = self.bucket.health
        return {
            "endpoint": redact_url(self.store.endpoint) if self.store.endpoint else "aws",
            "bucket": self.store.bucket,
            "prefix": self.store.prefix,
            # as the metric: not before the store's first answer (StoreHealth.reported_up)
            "up": health.reported_up(),
            "last_error": health.last_error or None,
            "objects_known": len(self.known),
            "uploads_running": self.uploads_running,
            "direct_serve": self.store.direct_serve,
            "replica_url": self.store.replica_url or None,
        }


async def let_go(lock: Lock) -> None:
    """Release ``lock`` now, also while being cancelled (within RELEASE_WITHIN): a lock
    kept sends the other replicas to this one for lock_ttl while it refreshes nothing."""
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + RELEASE_WITHIN
        await lock.release()
