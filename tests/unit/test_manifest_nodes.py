"""The nodes of a manifest's epoch stakes (``node id -> NodeVoteAccounts``), read in pieces
by a compiled kernel (``kernels.skip_nodes``): one Python step a node cost ~3 µs, and nodes
of zeros compress to nothing, so that an archive of kilobytes cost a check seconds of CPU a
million nodes. What the decoder gives is checked against the old one-step-a-node reading,
kept here as the reference: every field, count and reason, at any piece's size,
interpreted or compiled."""

from __future__ import annotations

import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_firedancer_manifest import firedancer_manifest
from test_manifest import MANIFEST
from test_manifest_v43 import manifest_v43

from tracker.errors import ArchiveInvalid
from tracker.proof.formats import kernels
from tracker.proof.formats import manifest as manifest_module
from tracker.proof.formats.manifest import ManifestDecoder
from tracker.proof.formats.parsing import ParserOf, run

_Q = struct.Struct("<Q")


class Reference(ManifestDecoder):
    """The decoder as it read the nodes before the kernel: one node a Python step."""

    def _nodes(self, nodes: int) -> ParserOf[None]:
        r = self.r
        for _ in range(nodes):
            yield from r.skip(32)
            yield from r.skip_seq(32)
            yield from r.skip(8)


def outcome(decoder: type[ManifestDecoder], data: bytes) -> str:
    """Every field, count, storage and hard fork decoded, or the reason (repr: NaNs equal)."""
    d = decoder(len(data))
    try:
        run(d.parser(), data)
        m = d.result()
    except ArchiveInvalid as exc:
        return exc.reason
    return repr(
        (sorted(m.fields.items()), sorted(m.counts.items()), m.storages.items(), m.hard_forks)
    )


def same(data: bytes) -> str:
    found = outcome(ManifestDecoder, data)
    assert found == outcome(Reference, data)
    return found


@pytest.fixture(params=["interpreted", "compiled"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The kernel interpreted (a small manifest's), or compiled (a large one's)."""
    if request.param == "compiled":
        kernels.load()
    else:
        monkeypatch.setattr(
            kernels, "skip_nodes", kernels._Kernel(kernels._RAW["skip_nodes"], None, 1)
        )
    return str(request.param)


#: agave's manifest: the count of the nodes of epoch 2's versioned stakes (the bank's own
#: epoch, read second: two nodes of 80 bytes), as decoding it finds it.
NODES_AT, NODES_BYTES = 4011, 160


def with_nodes(count: int, records: bytes) -> bytes:
    assert _Q.unpack_from(MANIFEST, NODES_AT)[0] == 2
    return MANIFEST[:NODES_AT] + _Q.pack(count) + records + MANIFEST[NODES_AT + 8 + NODES_BYTES :]


def node(ident: int, votes: int) -> bytes:
    return bytes([ident]) * 32 + _Q.pack(votes) + b"\x07" * 32 * votes + _Q.pack(10**9)


@pytest.mark.parametrize("piece", [1, 60, 200, 1 << 20])
def test_real_manifests_decode_as_before(
    mode: str, piece: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manifest_module, "PIECE", piece)
    for data in (MANIFEST, manifest_v43(7)[0], firedancer_manifest()):
        assert not same(data).startswith("manifest: ")


@pytest.mark.parametrize("piece", [1, 60, 200, 1 << 20])
def test_nodes_of_any_shape_decode_as_before(
    mode: str, piece: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manifest_module, "PIECE", piece)
    nodes = [node(1, 0), node(2, 3), node(3, 40), node(4, 1)]
    whole = b"".join(nodes)
    assert not same(with_nodes(len(nodes), whole)).startswith("manifest: ")
    assert not same(with_nodes(3000, bytes(48) * 3000)).startswith("manifest: ")
    # a list of vote accounts longer than a piece, skipped unread
    assert not same(with_nodes(1, node(5, 5000))).startswith("manifest: ")
    # counts past the end, and the member cut inside each part of a node
    for bad in (2**64 - 1, 2**63, 10**9):
        reason = same(with_nodes(1, bytes([6]) * 32 + _Q.pack(bad) + _Q.pack(1)))
        assert " elements of 32 bytes at byte " in reason
    for cut in range(0, len(whole), 7):
        data = with_nodes(len(nodes), whole)
        same(data[: NODES_AT + 8 + cut])


@settings(max_examples=100, deadline=None)
@given(st.integers(0, NODES_BYTES - 8), st.integers(0, 2**64 - 1))
def test_any_u64_in_the_nodes_gives_the_same_outcome(at: int, value: int) -> None:
    data = bytearray(MANIFEST)
    struct.pack_into("<Q", data, NODES_AT + 8 + at, value)
    same(bytes(data))


def test_a_million_zero_nodes_cost_a_blink() -> None:
    # Nodes of zeros compress to nothing: one Python step a node cost 3 s of a core a
    # million (an archive of kilobytes). Compiled (numba's load and compiling not counted).
    kernels.warm_up()
    data = with_nodes(1_000_000, bytes(48) * 1_000_000)
    started = time.process_time()  # CPU, not wall: the host's load does not count
    decoder = ManifestDecoder(len(data))
    run(decoder.parser(), data)
    decoder.result()
    assert time.process_time() - started < 0.5
