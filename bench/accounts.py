"""The ``accounts`` level's cost: its one pass over a real-shaped archive vs its unavoidable parts.

    .venv/bin/python bench/accounts.py                 # 1,000,000 accounts (~2 minutes)
    .venv/bin/python bench/accounts.py --accounts 200000

It builds (under ``--out``, ``bench/out/`` by default, kept for later runs) a ``.tar.zst``
snapshot archive whose storages hold ``--accounts`` distinct accounts, written with
:func:`tracker.proof.storagewrite.write_storage`: most with 165 bytes of data (token
accounts), the rest 0 to 2,000 bytes; 5% of them stored twice (an older version in an older
slot), 2% closed (their newest version has zero lamports, an older one has some), a storage a
slot, in ascending slot order as agave writes them (so every older version comes first and
needs the second read), a zstd frame every 32 MiB of tar. Then, each in a process of its own:

- ``baseline``: SHA-256 of the archive file, and the BLAKE3 XOF (2,048 bytes) of every newest
  account with lamports, from ready messages, in a tight loop: what no proof can do without;
- ``proof``: the archive read once (SHA-256 in a thread of its own, as the archive check
  does), zstd decoded, the tar walked, every storage fed to
  :class:`tracker.proof.accountsproof.AccountsProof`, and ``finish`` with the second read
  (:class:`tracker.files.reread.ArchiveReread`); its result is compared with the lattice hash
  computed while the archive was built.

It prints the ratio proof / baseline (the bound: 1.5), seconds per million accounts and per
GB of decoded archive, and the proof's peak memory (max RSS).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import blake3
import numpy as np
import zstandard

if __package__ in (None, ""):  # run as a script: make `tests` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.archives import _add, _FrameEvery, snapshot_entries
from tracker.files.archivecheck import READ_SIZE, _Prefetch
from tracker.files.decoders import decoder_for
from tracker.files.reread import ArchiveReread
from tracker.files.streamparse import Feeder
from tracker.files.tarwalk import BLOCK, ZERO_BLOCK, parse_header
from tracker.proof.accountsproof import AccountsProof
from tracker.proof.lattice import LtHash
from tracker.proof.parsing import REST, ParserOf
from tracker.proof.storagewrite import Account, write_storage

SLOT = 400_000_000
PER_SLOT = 5000


def build(out: Path, accounts: int) -> Path:
    """The archive and its side files (messages of the newest accounts, the storages'
    lengths, the expected lattice hash), built unless there."""
    base = out / f"accounts-{accounts}"
    archive = base / f"snapshot-{SLOT}-11111111111111111111111111111111.tar.zst"
    if archive.exists():
        return base
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(accounts)
    slots = max(1, accounts // PER_SLOT)
    pubkeys = rng.integers(0, 256, size=(accounts, 32), dtype=np.uint8)
    newest = rng.integers(1, slots, size=accounts) if slots > 1 else np.zeros(accounts, int)
    twice = rng.random(accounts) < 0.05
    closed = rng.random(accounts) < 0.02
    twice |= closed
    older = (rng.random(accounts) * newest).astype(np.int64)
    mints = rng.integers(0, 256, size=(64, 32), dtype=np.uint8)
    token = b"\x06\xdd\xf6\xe1\xd7\x65\xa1\x93\xd9\xcb\xe1\x46\xce\xeb\x79\xac" * 2
    lt = LtHash()
    messages = bytearray()
    ends: list[int] = []
    by_slot: dict[int, list[tuple[int, bool]]] = {}
    for i in range(accounts):
        if twice[i]:
            by_slot.setdefault(int(older[i]), []).append((i, False))
        by_slot.setdefault(int(newest[i]), []).append((i, True))

    def version(i: int, newer: bool) -> Account:
        if newer and closed[i]:
            return Account(pubkeys[i].tobytes(), 0)
        if i % 10 == 9:
            data = rng.integers(0, 256, size=int(rng.integers(0, 2000)), dtype=np.uint8)
            payload = data.tobytes()
        else:
            payload = mints[i % 64].tobytes() + rng.bytes(32) + rng.bytes(8) + bytes(93)
        return Account(pubkeys[i].tobytes(), 2039280 + (0 if newer else 1), payload, token)

    lengths: dict[str, int] = {}
    params = zstandard.ZstdCompressionParameters.from_level(1, threads=2, write_checksum=True)
    zstd = zstandard
    with open(archive, "wb") as raw:
        writer = zstd.ZstdCompressor(compression_params=params).stream_writer(raw, closefd=False)
        frames = _FrameEvery(writer, 32 * 1024 * 1024)
        with tarfile.open(fileobj=frames, mode="w|", format=tarfile.GNU_FORMAT) as tar:
            for name, data in snapshot_entries(SLOT, accounts=0, account_size=0, seed=7):
                _add(tar, name, data)
            for number, slot in enumerate(sorted(by_slot)):
                stored = []
                for i, newer in by_slot[slot]:
                    account = version(i, newer)
                    stored.append(account)
                    if newer and account.lamports:
                        messages += (
                            account.lamports.to_bytes(8, "little")
                            + account.data
                            + b"\0"
                            + account.owner
                            + account.pubkey
                        )
                        ends.append(len(messages))
                data = write_storage(stored)
                name = f"accounts/{slot}.{number}"
                lengths[name] = len(data)
                _add(tar, name, data + bytes(-len(data) % 4096))
        writer.flush(zstd.FLUSH_FRAME)
        writer.close()
    starts = [0, *ends[:-1]]
    for first in range(0, len(ends), 4096):
        lt.add(
            b"".join(
                blake3.blake3(messages[a:b]).digest(2048)
                for a, b in zip(
                    starts[first : first + 4096], ends[first : first + 4096], strict=True
                )
            )
        )
    (base / "messages").write_bytes(messages)
    np.save(base / "ends.npy", np.array(ends, dtype=np.int64))
    meta = {"lengths": lengths, "expected": lt.value().hex(), "archive": archive.name}
    (base / "meta.json").write_text(json.dumps(meta))
    return base


def baseline(base: Path) -> dict[str, Any]:
    """SHA-256 of the file, then the tight loop of BLAKE3 XOFs."""
    meta = json.loads((base / "meta.json").read_text())
    messages = (base / "messages").read_bytes()
    ends = np.load(base / "ends.npy").tolist()
    starts = [0, *ends[:-1]]
    t0, c0 = time.perf_counter(), time.process_time()
    sha = hashlib.sha256()
    with open(base / meta["archive"], "rb", buffering=0) as file:
        while data := file.read(READ_SIZE):
            sha.update(data)
    t1 = time.perf_counter()
    hasher = blake3.blake3
    for first in range(0, len(ends), 4096):
        [
            hasher(messages[a:b]).digest(2048)
            for a, b in zip(starts[first : first + 4096], ends[first : first + 4096], strict=True)
        ]
    t2, c2 = time.perf_counter(), time.process_time()
    return {"sha256": t1 - t0, "blake3": t2 - t1, "cpu": c2 - c0, "hashed": len(ends)}


def _members(proof: AccountsProof, lengths: dict[str, int], decoded: list[int]) -> ParserOf[None]:
    """A tar walk that hands each storage to the proof (the bench's stand-in for the check's)."""
    while True:
        block = yield BLOCK
        if block == ZERO_BLOCK:
            while True:  # the end-of-archive blocks and the record's padding
                yield REST
        name, size, _ = parse_header(block, 0)
        padded = -(-size // BLOCK) * BLOCK
        if name in lengths:
            slot, ident = name.removeprefix("accounts/").split(".")
            yield from proof.storage(int(slot), int(ident), size, lengths[name])
            if padded > size:
                yield size - padded
        elif padded:
            yield -padded
        decoded[0] += BLOCK + padded


def prove(base: Path) -> dict[str, Any]:
    """The proof's one pass and its finish, timed."""
    meta = json.loads((base / "meta.json").read_text())
    path = base / meta["archive"]
    t0, c0 = time.perf_counter(), time.process_time()
    proof = AccountsProof(10_000_000, threads=os.environ.get("BENCH_THREADS", "1") == "1")
    decoded = [0]
    with open(path, "rb", buffering=0) as file, _Prefetch(file.read) as source:
        tar = Feeder(_members(proof, meta["lengths"], decoded))
        decoder_for(".tar.zst")(source.next, tar.feed)
        tar.finish()
        digest = source.hexdigest()
    t1 = time.perf_counter()
    reread = ArchiveReread(str(path), ".tar.zst")
    try:
        lt_hash, note = proof.finish(reread)
    finally:
        reread.close()
    t2, c2 = time.perf_counter(), time.process_time()
    return {
        "cpu": c2 - c0,
        "pass": t1 - t0,
        "finish": t2 - t1,
        "ok": lt_hash is not None and lt_hash.hex() == meta["expected"],
        "note": note,
        "records": proof.records,
        "distinct": proof.index.count,
        "index_bytes": proof.index.nbytes(),
        "decoded": decoded[0],
        "sha256": digest,
        "max_rss": _peak_rss(),
    }


def _peak_rss() -> int:
    """This process's peak RSS (VmHWM: ru_maxrss would count the parent's before the exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _child(part: str, base: Path) -> dict[str, Any]:
    answer = subprocess.run(
        [sys.executable, __file__, "--part", part, "--out", str(base)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(answer.stdout)
    return result


def main() -> None:
    """Build, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--part", choices=("baseline", "proof"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        work = baseline if args.part == "baseline" else prove
        print(json.dumps(work(args.out)))
        return
    base = build(args.out, args.accounts)
    runs = []
    for run in range(args.runs):  # alternating who goes first: the shared machine is noisy
        first, second = ("baseline", "proof") if run % 2 == 0 else ("proof", "baseline")
        times = {first: _child(first, base)}
        times[second] = _child(second, base)
        runs.append(times)
    base_times = min((r["baseline"] for r in runs), key=lambda t: t["sha256"] + t["blake3"])
    proof_times = min((r["proof"] for r in runs), key=lambda t: t["pass"] + t["finish"])
    unavoidable = base_times["sha256"] + base_times["blake3"]
    spent = proof_times["pass"] + proof_times["finish"]
    size = (base / json.loads((base / "meta.json").read_text())["archive"]).stat().st_size
    print(json.dumps({"baseline": base_times, "proof": proof_times}, indent=1))
    print(
        f"archive: {size / 1e6:.0f} MB, {proof_times['decoded'] / 1e9:.2f} GB of tar, "
        f"{proof_times['records']} stored versions, {proof_times['distinct']} accounts"
    )
    print(f"proof correct: {proof_times['ok']}")
    print(
        f"ratio proof / (sha256 + blake3 tight loop), best of {args.runs}: "
        f"{spent / unavoidable:.2f} wall (bound 1.5), "
        f"{proof_times['cpu'] / base_times['cpu']:.2f} CPU time"
    )
    million = proof_times["distinct"] / 1e6
    print(
        f"seconds per million accounts: {spent / million:.2f}; "
        f"per GB of tar: {spent / (proof_times['decoded'] / 1e9):.2f}"
    )
    print(
        f"peak memory (max RSS) of the proof: {proof_times['max_rss'] / 2**20:.0f} MiB; "
        f"index {proof_times['index_bytes'] / proof_times['distinct']:.1f} bytes an account"
    )


if __name__ == "__main__":
    main()
