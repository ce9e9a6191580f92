"""A tracker that only serves does not load the proofs' heavy libraries: numpy (about 12 MB of
RSS) is loaded where an accounts proof runs, cryptography where a key is read (README.md,
"Performance": the memory figures), botocore where an object store is configured (with
urllib3, a tenth of a second of every start)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from archives import build_archive

HEAVY = ("numpy", "cryptography", "botocore")


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


#: What ``verify`` of a file without ``--trust-key`` starts without: the event loop's library,
#: the HTTP client, the config's types, the statements' library (a quarter of a second of
#: start-up together).
SERVER_SIDE = ("trio", "httpx", "cattrs", "tracker.config.schema", "cryptography")


def test_verify_of_a_file_loads_no_server_library_nor_the_statements_one(tmp_path: Path) -> None:
    name, data = build_archive(9300, accounts=8)
    path = tmp_path / name
    path.write_bytes(data)
    code = (
        "import sys\nfrom tracker.cli import main\n"
        f"code = main(['verify', {str(path)!r}])\n"
        f"print(code, ','.join(m for m in {SERVER_SIDE!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    verdict, _, loaded = out.stdout.strip().rpartition("\n")[2].partition(" ")
    assert out.stdout.startswith("ok accounts ")  # it ran the whole check
    assert (verdict, loaded) == ("0", "")
