"""Every HTTP client of the tracker is built in one place, tracker/net/httpclients.py (docs/
architecture.md, "Packages and their layers"): no cookie jar, no proxy or certificates from the
environment, whatever it is for. A client built anywhere else would escape those rules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FACTORY = ROOT / "tracker" / "net" / "httpclients.py"


def _builds_a_client(path: Path) -> list[int]:
    """Lines of ``path`` that call ``httpx.AsyncClient(...)`` or ``httpx.Client(...)``."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("AsyncClient", "Client")
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "httpx"
    ]


def test_clients_are_built_in_net_clients_only() -> None:
    elsewhere = {
        path.relative_to(ROOT).as_posix(): lines
        for path in sorted((ROOT / "tracker").rglob("*.py"))
        if path != FACTORY and (lines := _builds_a_client(path))
    }
    assert elsewhere == {}
    assert _builds_a_client(FACTORY)  # the finder finds what it looks for
