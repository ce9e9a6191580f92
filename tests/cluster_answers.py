"""Answers of a Solana RPC node's ``getClusterNodes``: node entries, whole answers, and the
hostile ones (deeply nested; 32 MiB of empty nodes), for the parser's unit tests and the
cluster discovery's integration tests."""

from __future__ import annotations

import functools
import json
from typing import Any


def node_entry(n: int, rpc: str | None, version: str = "2.2.1") -> dict[str, Any]:
    return {"pubkey": f"node{n:05d}", "gossip": "x", "rpc": rpc, "version": version}


#: 5,000 levels of nesting: json.loads raises RecursionError (not a ValueError) on it.
NESTED = b'{"jsonrpc": "2.0", "id": 1, "result": ' + b"[" * 5000 + b"]" * 5000 + b"}"


def nodes_answer(entries: list[dict[str, Any]]) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "result": entries}).encode()


@functools.cache
def empty_nodes() -> bytes:
    """11 million ``{}`` in 32 MiB (under the body cap): ~960 MB of dicts to json.loads.
    Made on first use, not at import: every xdist worker imports every test module."""
    return b'{"jsonrpc": "2.0", "id": 1, "result": [' + b",".join([b"{}"] * 11_000_000) + b"]}"
