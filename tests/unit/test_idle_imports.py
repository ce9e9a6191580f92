"""A tracker that only serves does not load the proofs' heavy libraries: numpy (about 12 MB of
RSS) is loaded where an accounts proof runs, cryptography where a key is read (README.md,
"Performance": the memory figures)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("numpy", "cryptography")


def test_the_service_and_its_config_load_no_heavy_library() -> None:
    code = (
        "import sys, tracker.service, tracker.config.loading, tracker.proof.archive.archivecheck\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == ""


def test_a_proof_loads_numpy_where_it_runs() -> None:
    code = (
        "import sys\nfrom tracker.proof.formats.lattice import LtHash\nLtHash()\n"
        "print('numpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
