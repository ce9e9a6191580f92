"""Signed statements served by the daemon (docs/http-api.md, "Signed statements"): a real
tracker on 127.0.0.1 with ``attest`` configured, a real upstream, real archives
(tests/archives.py) and, for the bucket, a real SeaweedFS.

The tracker signs the copies it checked (its disk cache, the bucket copies it uploaded),
serves each at ``{archive}.attestation`` and in the JSON listings' ``attestations``, and
leaves its statement beside its upload in the bucket, where another replica reads it, checks
it and serves it; anything hostile there is refused with one log line and a counter, never
served.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
import yaml
from archives import build_archive
from fakes import Sidecar, sidecar_info
from helpers_process import start_serve
from helpers_proxy import (
    GROUP,
    TrackerUnderTest,
    advertise_files,
    make_config,
    running_tracker,
    wait_for,
)
from helpers_replicas import idle, replica
from helpers_s3 import BUCKET, Weed
from helpers_server import serve_app
from helpers_statements import keypair_json, signer, statement
from helpers_tracker import wait_until
from helpers_upstream import FakeUpstream, serving
from helpers_wire import raw_request

from tracker.config.files import signing
from tracker.config.schema import Attest
from tracker.observability.logs import TextFormatter
from tracker.proof.levels import STRUCTURE_ONLY, Level
from tracker.proof.statements import MAX_CLOCK_SKEW, Attestation, parse_document
from tracker.web import wire

NAME, GOOD = build_archive(9600, compression="zst", seed=96)
SHA = hashlib.sha256(GOOD).hexdigest()
ROUTES = (f"/v1/{GROUP}/{NAME}.attestation", f"/v1/{NAME}.attestation?group={GROUP}")
ROOT = f"/{NAME}.attestation"
REFUSED = "snapshot_tracker_bucket_sides_refused_total"


def attest(tmp_path: Path, n: int = 1, valid_for: float = 3600.0) -> Attest:
    """``attest`` with the key of seed ``n`` in a file of mode 0600."""
    path = tmp_path / f"key-{n}.json"
    path.write_bytes(keypair_json(bytes([n]) * 32))
    os.chmod(path, 0o600)
    return Attest(key=str(path), valid_for=valid_for)


async def fill(t: TrackerUnderTest, name: str = NAME, data: bytes = GOOD) -> None:
    """Download the archive through the tracker: it is cached (and uploaded) checked."""
    answer = await raw_request(t.base, f"/v1/{GROUP}/{name}")
    assert answer.status == 200 and answer.body == data
    sha = hashlib.sha256(data).hexdigest()
    await wait_for(lambda: t.parts.streamer.digests.get(GROUP, name) == sha, timeout=30)


async def listed_file(t: TrackerUnderTest) -> dict[str, Any]:
    """The archive's file entry in ``/v1/snapshots``."""
    answer = await raw_request(t.base, f"/v1/snapshots?group={GROUP}")
    assert answer.status == 200
    files = [f for s in json.loads(answer.body) for f in s["files"] if f["url"].endswith(NAME)]
    assert files
    return files[0]  # type: ignore[no-any-return]


def logged(caplog: pytest.LogCaptureFixture, event: str) -> list[str]:
    """The lines the tracker writes for ``event`` (its text format)."""
    text = TextFormatter()
    return [text.format(r) for r in caplog.records if r.getMessage() == event]


async def served(t: TrackerUnderTest, path: str) -> Attestation:
    """The document served at ``path``, parsed as a client does."""
    answer = await raw_request(t.base, path)
    assert answer.status == 200, answer.body
    assert answer.header("content-type") == "application/json"
    return parse_document(answer.body)


async def test_the_cache_s_copy_is_signed_and_served_on_every_route(tmp_path: Path) -> None:
    key = signer(1)
    config = make_config(tmp_path / "cache", verify_archives=True, attest=attest(tmp_path))
    async with (
        serving(FakeUpstream(files={NAME: GOOD})) as up,
        running_tracker(config) as t,
    ):
        advertise_files(t.index, up, up.files)
        before = time.time()
        await fill(t)
        documents = [await served(t, path) for path in (*ROUTES, ROOT)]
        document = documents[0]
        assert all(d == document for d in documents)  # one statement, signed once
        said = document.statement
        assert document.signer == key.public_key
        assert (said.name, said.size, said.sha256, said.slot) == (NAME, len(GOOD), SHA, 9600)
        held = t.parts.streamer.digests.verified(GROUP, NAME)
        assert held is not None and said.level == held.proof.level > Level.STRUCTURE
        assert before - 1 <= said.checked_at <= time.time()
        assert 0 <= said.expires - 3600 - said.checked_at <= 30  # valid_for from its signing
        entry = await listed_file(t)
        assert entry["sha256"] == SHA
        assert entry["attestations"] == [document.to_json()]


async def test_a_cached_copy_gone_from_disk_is_no_longer_stated_nor_listed(
    tmp_path: Path,
) -> None:
    """The cached file (and the files beside it) removed behind the tracker's back: within
    a round of the background keeping, its digest is forgotten, so no listing shows its
    SHA-256 or statement and no statement of it is renewed, whatever requests come; a
    request for it is not a hit (and would forget it at once)."""
    config = make_config(tmp_path / "cache", verify_archives=True, attest=attest(tmp_path))
    async with (
        serving(FakeUpstream(files={NAME: GOOD})) as up,
        running_tracker(config) as t,
    ):
        advertise_files(t.index, up, up.files)
        await fill(t)
        assert (await served(t, ROUTES[0])).statement.sha256 == SHA
        for path in (tmp_path / "cache" / GROUP).iterdir():
            path.unlink()
        digests = t.parts.streamer.digests
        await wait_for(lambda: digests.get(GROUP, NAME) is None)
        entry = await listed_file(t)  # still offered by its source
        assert "sha256" not in entry and not entry.get("attestations")
        assert (await raw_request(t.base, ROUTES[0])).status == 404
        assert t.parts.attestations.documents(GROUP, NAME) == []


async def statements_route(t: TrackerUnderTest) -> dict[str, Any]:
    """What ``/v1/statements`` answers (JSON, 200)."""
    answer = await raw_request(t.base, "/v1/statements")
    assert answer.status == 200 and answer.header("content-type") == "application/json"
    return json.loads(answer.body)  # type: ignore[no-any-return]


async def test_v1_statements_shows_the_key_how_many_are_held_and_the_last_signed(
    tmp_path: Path,
) -> None:
    """``/v1/statements``, the JSON sibling of ``/v1/targets`` for signing: the key a fleet's
    ``--trust-key`` names, the statements held, the last one signed."""
    config = make_config(tmp_path / "cache", verify_archives=True, attest=attest(tmp_path))
    async with (
        serving(FakeUpstream(files={NAME: GOOD})) as up,
        running_tracker(config) as t,
    ):
        advertise_files(t.index, up, up.files)
        assert await statements_route(t) == {
            "signing": True,
            "public_key": signer(1).public_key,
            "valid_for_seconds": 3600.0,
            "statements": 0,
            "last_signed": None,
        }
        before = time.time()
        await fill(t)
        shown = await statements_route(t)
        document = await served(t, ROUTES[0])
    assert shown["statements"] == 1
    last = shown["last_signed"]
    assert (last["group"], last["name"]) == (GROUP, NAME)
    at = datetime.fromisoformat(last["time"].replace("Z", "+00:00")).timestamp()
    assert before - 1 <= at <= time.time()
    # The time is the signing's: the statement expires valid_for after it.
    assert abs(document.statement.expires - 3600 - at) <= 1


async def test_v1_statements_without_attest_says_nothing_is_signed(tmp_path: Path) -> None:
    config = make_config(tmp_path / "cache", verify_archives=True)
    async with running_tracker(config) as t:
        assert await statements_route(t) == {
            "signing": False,
            "public_key": None,
            "valid_for_seconds": None,
            "statements": 0,
            "last_signed": None,
        }


async def test_without_attest_or_a_verified_copy_there_is_no_statement(tmp_path: Path) -> None:
    config = make_config(tmp_path / "cache", verify_archives=True)
    async with (
        serving(FakeUpstream(files={NAME: GOOD})) as up,
        running_tracker(config) as t,
    ):
        advertise_files(t.index, up, up.files)
        for path in (*ROUTES, ROOT):  # nothing held yet
            answer = await raw_request(t.base, path)
            assert answer.status == 404
            assert answer.body == b"no signed statement of this archive is held\n"
        await fill(t)
        for path in (*ROUTES, ROOT):  # held verified, but no attest: nothing signed
            assert (await raw_request(t.base, path)).status == 404
        entry = await listed_file(t)
        assert entry["sha256"] == SHA and entry["attestations"] == []


async def test_a_reload_with_another_key_signs_again_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered = []
    render = wire._source_bytes

    def counted(*args: Any) -> bytes:
        rendered.append(args[1])
        return render(*args)

    monkeypatch.setattr(wire, "_source_bytes", counted)
    config = make_config(tmp_path / "cache", verify_archives=True, attest=attest(tmp_path, 1))
    async with (
        serving(FakeUpstream(files={NAME: GOOD})) as up,
        running_tracker(config) as t,
    ):
        advertise_files(t.index, up, up.files)
        await fill(t)
        assert (await served(t, ROUTES[0])).signer == signer(1).public_key
        listed = (await listed_file(t))["attestations"]  # rendered, and kept
        assert [a["signer"] for a in listed] == [signer(1).public_key]
        renders = len(rendered)
        assert (await listed_file(t))["attestations"] == listed
        assert len(rendered) == renders  # nothing changed: the rendering kept is served
        new = attrs.evolve(t.config, attest=attest(tmp_path, 2))
        t.parts.attestations.configure(*signing(new.attest))
        assert (await served(t, ROUTES[0])).signer == signer(2).public_key
        assert [a["signer"] for a in (await listed_file(t))["attestations"]] == [
            signer(2).public_key
        ]


# -- the bucket ---------------------------------------------------------------------------


async def test_replicas_serve_each_other_s_statements(weed: Weed, tmp_path: Path) -> None:
    prefix = f"a-{secrets.token_hex(4)}/"
    key = f"{prefix}{GROUP}/{NAME}"
    async with serving(FakeUpstream(files={NAME: GOOD})) as up:
        async with replica(weed, up, tmp_path, prefix, attest=attest(tmp_path, 1)) as first:
            await fill(first)
            await wait_for(lambda: key in weed.objects(prefix), timeout=30)
            await idle(first)
            own = await served(first, ROUTES[0])
            # Its own statements: of its cached copy, and of the bucket copy it uploaded (one,
            # when both say the same to the second).
            signed = first.parts.attestations.documents(GROUP, NAME)
            assert {a.signer for a in signed} == {own.signer} and len(signed) in (1, 2)
        assert set(weed.objects(prefix)) == {
            key,
            key + ".sha256",
            key + ".proof",
            key + ".attestation",
        }
        body = weed.client().get_object(Bucket=BUCKET, Key=key + ".attestation")["Body"]
        in_bucket = parse_document(body.read())
        assert in_bucket in signed
        # Another replica, another key, its own empty cache: it never checked the copy, so
        # it signs nothing of it, and serves the first replica's statement from the bucket.
        async with replica(weed, up, tmp_path, prefix, attest=attest(tmp_path, 2)) as second:
            objects = second.parts.objects
            assert objects is not None
            await objects.tier.startup()  # as the service starts it: reads what lies beside
            assert await served(second, ROUTES[0]) == in_bucket
            entry = await listed_file(second)
            assert entry["attestations"] == [in_bucket.to_json()]
            assert entry["proof"]["level"] == own.statement.level.label
        assert len(up.gets(NAME)) == 1


def _hostile_documents() -> dict[str, tuple[bytes, str]]:
    """Documents put beside the good object, and what the refusal's line says."""
    key1, key2 = signer(1), signer(2)
    now = int(time.time())
    good = statement(
        name=NAME, size=len(GOOD), sha256=SHA, slot=9600, checked_at=now, expires=now + 3600
    )
    signed = key1.sign(good)
    body = signed.to_json()
    flipped = body["signature"][:-2] + ("1" if body["signature"][-2] != "1" else "2") + "1"
    return {
        "bad_signature": (_doc(body, signature=flipped), "bad signature"),
        "another_key": (_doc(body, signer=key2.public_key), "bad signature"),
        "expired": (key1.sign(attrs.evolve(good, expires=now - 10)).encode(), "expired"),
        "another_size": (key1.sign(attrs.evolve(good, size=len(GOOD) + 1)).encode(), "size"),
        "another_digest": (key1.sign(attrs.evolve(good, sha256="cd" * 32)).encode(), "sha256"),
        "another_archive": (
            key1.sign(attrs.evolve(good, name=NAME.replace("9600", "9601"))).encode(),
            "names",
        ),
        "malformed": (b'{"statement": 1, "signer": [], ', "not a JSON object"),
        "ten_megabytes": (b"{" + b" " * (10 * 1024 * 1024) + b"}", "over 16384 bytes"),
    }


def _doc(body: dict[str, str], **changes: str) -> bytes:
    return json.dumps({**body, **changes}).encode()


HOSTILE = _hostile_documents()


async def put_copy(weed: Weed, key: str, data: bytes, **sides: bytes) -> None:
    """The archive at ``key`` with its digest line (of GOOD) and ``sides`` (suffix: body)."""
    s3 = weed.client()
    s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    s3.put_object(Bucket=BUCKET, Key=key + ".sha256", Body=f"{SHA}  {NAME}\n".encode())
    for suffix, body in sides.items():
        s3.put_object(Bucket=BUCKET, Key=f"{key}.{suffix}", Body=body)


async def read_by_a_replica(
    weed: Weed, tmp_path: Path, prefix: str
) -> tuple[int, dict[str, Any] | None, float, Any]:
    """A fresh replica HEADs the archive (it reads what lies beside it): the status of its
    ``.attestation`` route, the listing's file entry, the refusals counted, its proof."""
    async with (
        serving(FakeUpstream(files={NAME: GOOD})) as up,
        replica(weed, up, tmp_path, prefix, attest=attest(tmp_path, 3)) as t,
    ):
        head = await raw_request(t.base, f"/v1/{GROUP}/{NAME}", method="HEAD")
        assert head.status == 200
        status = (await raw_request(t.base, ROUTES[0])).status
        entry = await listed_file(t)
        refused = t.counter(REFUSED, kind="attestation") + t.counter(REFUSED, kind="proof")
        held = t.parts.streamer.digests.verified(GROUP, NAME)
        return status, entry, refused, held.proof if held is not None else None


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_a_hostile_statement_in_the_bucket_is_refused_in_one_line(
    weed: Weed, tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tracker.objectstore")
    prefix = f"h-{secrets.token_hex(4)}/"
    document, reason = HOSTILE[case]
    await put_copy(weed, f"{prefix}{GROUP}/{NAME}", GOOD, attestation=document)
    status, entry, refused, _proof = await read_by_a_replica(weed, tmp_path, prefix)
    assert status == 404  # never served
    assert entry is not None and entry["sha256"] == SHA and entry["attestations"] == []
    assert refused == 1
    lines = logged(caplog, "bucket_attestation_refused")
    assert len(lines) == 1 and reason in lines[0] and "\n" not in lines[0]


async def test_a_tampered_bucket_copy_is_not_vouched_for(
    weed: Weed, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tracker.objectstore")
    prefix = f"t-{secrets.token_hex(4)}/"
    key1 = signer(1)
    now = int(time.time())
    good = statement(
        name=NAME, size=len(GOOD), sha256=SHA, slot=9600, checked_at=now, expires=now + 3600
    )
    # The object was replaced after its statement was written: it is not the copy signed.
    await put_copy(
        weed, f"{prefix}{GROUP}/{NAME}", GOOD + b"x", attestation=key1.sign(good).encode()
    )
    status, _entry, refused, _proof = await read_by_a_replica(weed, tmp_path, prefix)
    assert status == 404 and refused == 1
    (line,) = logged(caplog, "bucket_attestation_refused")
    assert f"names size {len(GOOD)}, the object has {len(GOOD) + 1}" in line


async def test_a_statement_dated_ahead_is_served_once_this_clock_reaches_it(
    weed: Weed, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The uploader's clock runs ahead of this replica's by more than the skew allowed: its
    statement is refused when read (once), then read again at the first look at the object
    once this clock reaches it, and served (as a local file's statement is)."""
    caplog.set_level(logging.WARNING, logger="tracker.objectstore")
    prefix = f"k-{secrets.token_hex(4)}/"
    key = f"{prefix}{GROUP}/{NAME}"
    async with (
        serving(FakeUpstream(files={NAME: GOOD})) as up,
        replica(weed, up, tmp_path, prefix, attest=attest(tmp_path, 3)) as t,
    ):
        # Written once the replica is up (its start-up is no part of what is timed): taken
        # from 6 s on by this clock (room for a loaded host's first two requests).
        now = int(time.time())
        ahead = statement(
            name=NAME,
            size=len(GOOD),
            sha256=SHA,
            slot=9600,
            checked_at=now + MAX_CLOCK_SKEW + 6,
            expires=now + 3600,
        )
        signed = signer(1).sign(ahead)
        await put_copy(weed, key, GOOD, attestation=signed.encode())
        head = await raw_request(t.base, f"/v1/{GROUP}/{NAME}", method="HEAD")
        assert head.status == 200  # it read what lies beside the object
        assert (await raw_request(t.base, ROUTES[0])).status == 404
        assert time.time() < now + 6  # refused for being ahead, not for anything else
        (line,) = logged(caplog, "bucket_attestation_refused")
        assert "ahead of now" in line

        async def taken() -> bool:
            head = await raw_request(t.base, f"/v1/{GROUP}/{NAME}", method="HEAD")
            assert head.status == 200
            return (await raw_request(t.base, ROUTES[0])).status == 200

        await wait_until(taken, timeout=now + 6 - time.time() + 5)
        assert await served(t, ROUTES[0]) == signed
        assert (await listed_file(t))["attestations"] == [signed.to_json()]
        assert t.counter(REFUSED, kind="attestation") == 1  # not read again meanwhile


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{" + b" " * (10 * 1024 * 1024) + b"}", "over 4096 bytes"),
        (b'{"level": "everything"}', "not a proof"),
        (b"\xff\xfe", "not a proof"),
        (b"[" * 3000 + b"]" * 3000, "over 4096 bytes"),
    ],
)
async def test_a_hostile_proof_in_the_bucket_leaves_the_copy_unproven(
    weed: Weed, tmp_path: Path, body: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tracker.objectstore")
    prefix = f"p-{secrets.token_hex(4)}/"
    await put_copy(weed, f"{prefix}{GROUP}/{NAME}", GOOD, proof=body)
    status, entry, refused, proof = await read_by_a_replica(weed, tmp_path, prefix)
    assert proof == STRUCTURE_ONLY and refused == 1
    assert entry is not None and entry["proof"] == {"level": "structure"} and status == 404
    lines = logged(caplog, "bucket_proof_refused")
    assert len(lines) == 1 and reason in lines[0] and "\n" not in lines[0]


async def test_serve_loads_the_key_at_start_and_on_each_reload(
    nursery: trio.Nursery, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    sidecar = Sidecar(body=[sidecar_info((NAME, len(GOOD)))], files={NAME: GOOD})
    source = await nursery.start(serve_app, sidecar.app())
    key1, key2 = attest(tmp_path, 1), attest(tmp_path, 2)
    settings: dict[str, Any] = {
        "scrape_interval": "30s",
        "listen": "127.0.0.1:0",
        "internal_listen": "127.0.0.1:0",
        "proxy_snapshot_downloads": True,
        "proxy_snapshot_cache_dir": str(tmp_path / "cache"),
        "verify_archives": True,
        "attest": {"key": key1.key},
        "target_groups": [{"group": GROUP, "static_targets": {"targets": [source[7:]]}}],
    }
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(settings))
    serve = await start_serve("--config", str(path))
    assert serve.internal is not None
    route = f"{serve.base}{ROUTES[0]}"

    async def signed_by(key: str) -> bool:
        answer = await client.get(route)
        return answer.status_code == 200 and parse_document(answer.content).signer == key

    await wait_until(lambda: _listed(client, serve.base))
    assert (await client.get(f"{serve.base}/v1/{GROUP}/{NAME}")).content == GOOD
    await wait_until(lambda: signed_by(signer(1).public_key))
    settings["attest"] = {"key": key2.key}
    path.write_text(yaml.safe_dump(settings))
    serve.proc.send_signal(signal.SIGHUP)
    await wait_until(lambda: signed_by(signer(2).public_key))
    # A key others may read is refused at reload, naming its key path: the old one signs on.
    os.chmod(key1.key, 0o644)
    settings["attest"] = {"key": key1.key}
    path.write_text(yaml.safe_dump(settings))
    refused = await client.post(f"{serve.internal}/reload")
    assert refused.status_code == 400 and "attest.key" in refused.text
    assert await signed_by(signer(2).public_key)
    assert await serve.stop() == 0


async def test_a_reload_reads_the_key_again_off_the_event_loop(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload reads ``attest.key`` again (``signing``): on the event loop, a key whose
    mount hung froze every request (the API, the archives, /healthz) for as long as the read
    waited. It is read in a worker thread: the tracker answers meanwhile (the hung read is
    the test's, at the executor seam, released at the end)."""
    import threading

    from helpers_tracker import start_tracker, write_config

    import tracker.service as service

    path = write_config(
        tmp_path, {"internal_listen": "127.0.0.1:0", "attest": {"key": attest(tmp_path).key}}
    )
    _public, internal = await start_tracker(nursery, path)
    asked, answers, read = threading.Event(), threading.Event(), threading.Event()
    real = service.signing

    def hung(attest: Attest | None) -> Any:
        asked.set()
        answers.wait(60)  # the key's mount hangs
        try:
            return real(attest)
        finally:
            read.set()

    monkeypatch.setattr(service, "signing", hung)
    async with httpx.AsyncClient(timeout=120) as client:
        reloaded: list[httpx.Response] = []

        async def reload() -> None:
            reloaded.append(await client.post(f"{internal}/reload"))

        try:
            async with trio.open_nursery() as requests:
                requests.start_soon(reload)
                assert await trio.to_thread.run_sync(asked.wait, 60)
                assert (await client.get(f"{internal}/healthz")).status_code == 200
                assert not read.is_set()  # answered while the key's read still hung
                answers.set()
        finally:
            answers.set()
    assert [answer.status_code for answer in reloaded] == [200]


async def _listed(client: httpx.AsyncClient, base: str) -> bool:
    return bool((await client.get(f"{base}/v1/snapshots")).json())


async def test_a_statement_signed_again_is_written_again_beside_its_object(
    weed: Weed, tmp_path: Path
) -> None:
    prefix = f"r-{secrets.token_hex(4)}/"
    key = f"{prefix}{GROUP}/{NAME}.attestation"
    s3 = weed.client()

    def in_bucket() -> Attestation:
        return parse_document(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())

    async with (
        serving(FakeUpstream(files={NAME: GOOD})) as up,
        replica(weed, up, tmp_path, prefix, attest=attest(tmp_path, 1, valid_for=4)) as t,
    ):
        await fill(t)
        await idle(t)
        first = in_bucket()
        objects = t.parts.objects
        assert objects is not None
        # Half its life (2 s) passed: signed again, and written again by the health watcher
        # (as the service runs it, more often).
        async with trio.open_nursery() as nursery:
            nursery.start_soon(objects.tier.watch, 0.2)
            await wait_for(lambda: in_bucket() != first, timeout=20)
            nursery.cancel_scope.cancel()
        again = in_bucket()
        assert again.statement == attrs.evolve(first.statement, expires=again.statement.expires)
        assert again.statement.expires > first.statement.expires
        t.parts.attestations.sync(time.time())
        assert again in t.parts.attestations.documents(GROUP, NAME)  # served as written


# -- renewed statements read again by the other replicas ----------------------------------


async def test_a_replica_serves_the_uploader_s_renewal_before_the_first_expires(
    weed: Weed, tmp_path: Path
) -> None:
    prefix = f"n-{secrets.token_hex(4)}/"
    key = f"{prefix}{GROUP}/{NAME}.attestation"
    s3 = weed.client()

    def in_bucket() -> Attestation:
        return parse_document(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())

    async with (
        serving(FakeUpstream(files={NAME: GOOD})) as up,
        replica(weed, up, tmp_path, prefix, attest=attest(tmp_path, 1, valid_for=16)) as first,
        replica(weed, up, tmp_path, prefix, attest=attest(tmp_path, 2)) as second,
    ):
        await fill(first)
        await idle(first)
        signed = in_bucket()
        uploader, reader = first.parts.objects, second.parts.objects
        assert uploader is not None and reader is not None
        await reader.tier.startup()  # as the service starts it: reads what lies beside
        assert await served(second, ROUTES[0]) == signed

        async def renewed() -> bool:
            return await served(second, ROUTES[0]) != signed  # and never nothing meanwhile

        # Both health watchers run (as the service runs them, more often): the uploader signs
        # again at half the life and writes it, the other replica reads it in the background.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(uploader.tier.watch, 0.2)
            nursery.start_soon(reader.tier.watch, 0.2)
            await wait_until(renewed, timeout=signed.statement.expires - time.time())
            nursery.cancel_scope.cancel()
        assert time.time() < signed.statement.expires
        again = await served(second, ROUTES[0])
        assert again == in_bucket() and again.signer == signer(1).public_key
        assert again.statement == attrs.evolve(signed.statement, expires=again.statement.expires)
        assert again.statement.expires > signed.statement.expires
        assert (await listed_file(second))["attestations"] == [again.to_json()]
        assert second.counter(REFUSED, kind="attestation") == 0


async def test_a_tampered_renewal_is_refused_and_the_old_statement_served_until_it_expires(
    weed: Weed, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tracker.objectstore")
    prefix = f"m-{secrets.token_hex(4)}/"
    key = f"{prefix}{GROUP}/{NAME}"
    await put_copy(weed, key, GOOD)
    async with (
        serving(FakeUpstream(files={NAME: GOOD})) as up,
        replica(weed, up, tmp_path, prefix, attest=attest(tmp_path, 3)) as t,
    ):
        # The statement's 14 s of life start once the replica is up (its start-up, seconds
        # on a loaded host, is no part of what is timed), written before the replica's
        # first look at the archive.
        key1, now = signer(1), int(time.time())
        said = statement(
            name=NAME, size=len(GOOD), sha256=SHA, slot=9600, checked_at=now, expires=now + 14
        )
        old = key1.sign(said)
        weed.client().put_object(Bucket=BUCKET, Key=key + ".attestation", Body=old.encode())
        head = await raw_request(t.base, f"/v1/{GROUP}/{NAME}", method="HEAD")
        assert head.status == 200  # it read what lies beside the object
        assert await served(t, ROUTES[0]) == old
        # The "renewal" written beside it is not what its signer signed.
        body = key1.sign(attrs.evolve(said, expires=now + 3600)).to_json()
        flipped = body["signature"][:-2] + ("1" if body["signature"][-2] != "1" else "2") + "1"
        weed.client().put_object(
            Bucket=BUCKET, Key=key + ".attestation", Body=_doc(body, signature=flipped)
        )
        objects = t.parts.objects
        assert objects is not None

        def refusals() -> float:
            return t.counter(REFUSED, kind="attestation")

        async def gone() -> bool:
            return (await raw_request(t.base, ROUTES[0])).status == 404

        async with trio.open_nursery() as nursery:
            nursery.start_soon(objects.tier.watch, 0.2)
            await wait_for(lambda: refusals() >= 1, timeout=said.expires - time.time())
            assert await served(t, ROUTES[0]) == old  # kept while it holds
            assert time.time() < said.expires
            await wait_until(gone, timeout=said.expires - time.time() + 5)
            nursery.cancel_scope.cancel()
        assert time.time() >= said.expires  # no longer served once it expired
        # Read again at most once a second from half its life (7 s of 14) to its expiry, and
        # once as it expires: 8 reads at most, no storm.
        assert 1 <= refusals() <= 8
        lines = logged(caplog, "bucket_attestation_refused")
        assert len(lines) == refusals()
        assert all("bad signature" in line and "\n" not in line for line in lines)
