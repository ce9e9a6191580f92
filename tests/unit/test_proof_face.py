"""The proof's clients use its small face only (tracker/proof/__init__.py): the formats and
the accounts level's insides are imported by the proof tree alone."""

from __future__ import annotations

import ast
from pathlib import Path

TRACKER = Path(__file__).resolve().parents[2] / "tracker"

#: What packages outside tracker/proof may import of it.
FACE = {
    "tracker.proof.levels",
    "tracker.proof.statements",
    "tracker.proof.accounts.budget",
    "tracker.proof.accounts.machine",
    "tracker.proof.archive.archivecheck",
    "tracker.proof.archive.headproof",
    "tracker.proof.records.attestations",
    "tracker.proof.records.attesting",
    "tracker.proof.records.localcopies",
    "tracker.proof.cluster.clustervotes",
    "tracker.proof.cluster.lifting",
    "tracker.proof.background.heads",
    "tracker.proof.background.localfiles",
}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def beyond_the_face(modules: dict[str, set[str]]) -> list[str]:
    """``file imports module`` for each proof module a file outside the tree imports that is
    not in :data:`FACE` (``from tracker.proof.x import name`` counts as ``tracker.proof.x``)."""
    wrong = []
    for file, imported in sorted(modules.items()):
        for module in sorted(imported):
            if not module.startswith("tracker.proof.") or module in FACE:
                continue
            if any(module.startswith(f"{face}.") for face in FACE):
                continue  # a name imported from a face module
            if module.rsplit(".", 1)[0] in FACE:
                continue
            is_package = (TRACKER.parent / module.replace(".", "/") / "__init__.py").exists()
            is_module = (TRACKER.parent / (module.replace(".", "/") + ".py")).exists()
            if is_package or is_module:
                wrong.append(f"{file} imports {module}")
    return wrong


def test_the_proofs_clients_use_its_face_only() -> None:
    outside = {
        path.relative_to(TRACKER.parent).as_posix(): _imports(path)
        for path in TRACKER.rglob("*.py")
        if "proof" not in path.relative_to(TRACKER).parts[:1]
    }
    assert beyond_the_face(outside) == []


def test_a_client_reaching_past_the_face_is_named() -> None:
    wrong = beyond_the_face({"tracker/cache/x.py": {"tracker.proof.formats.manifest"}})
    assert wrong == ["tracker/cache/x.py imports tracker.proof.formats.manifest"]
    assert beyond_the_face({"tracker/cache/x.py": {"tracker.proof.levels.Level"}}) == []
