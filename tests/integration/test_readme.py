"""The README as a new operator follows it: the set-up command's ``serve``, the tour's
commands one by one as typed (the status page read as text, no browser), and the ``fetch``
that ends the tour, with verification on; what the tour writes is ignored by git.

Only the ports change (a copy of examples/local.yml on port 0, the addresses in the
commands rewritten to the ones the tracker bound), so an operator's own quickstart on
8457/8458 can run beside the suite; ``.venv/bin/`` is this suite's own venv, which the
set-up command's first two steps made."""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import sys
from pathlib import Path

import httpx
import trio
from helpers_process import start_serve
from helpers_tls import client_tls

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
BLOCK_RE = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)
PUBLIC, INTERNAL = "http://127.0.0.1:8458", "http://127.0.0.1:8457"


def sh_blocks(readme: str) -> list[str]:
    """The README's ``sh`` code blocks, in order."""
    return BLOCK_RE.findall(readme)


def commands(block: str) -> list[str]:
    """The commands of a block: its lines that are neither empty nor comments."""
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def as_typed_here(command: str, public: str, internal: str) -> str:
    """``command`` with the tracker's real addresses and this suite's venv."""
    command = command.replace(PUBLIC, public).replace(INTERNAL, internal)
    return command.replace(".venv/bin/", f"{Path(sys.executable).parent}/")


def root_ignored(name: str, is_dir: bool) -> bool:
    """Whether .gitignore ignores ``name`` in the repository root: a pattern anchored there
    (``/head.bin``, ``/quickstart-ledger/``) or one that holds anywhere (no ``/`` inside)."""
    for line in (ROOT / ".gitignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith(("#", "!")):
            continue
        if pattern.endswith("/") and not is_dir:
            continue
        pattern = pattern.strip("/")
        if "/" not in pattern and fnmatch.fnmatchcase(name, pattern):
            return True
    return False


def quickstart_config(tmp_path: Path, path: str) -> Path:
    """A copy of the quickstart's config on port 0, next to a link to its ledger: a copy of
    examples/ledger/ where the tour runs (``work/examples/ledger``: the tour's ``attest``
    writes beside those archives, never beside the repository's)."""
    original = ROOT / path
    text = original.read_text()
    assert "127.0.0.1:8458" in text and "127.0.0.1:8457" in text
    copy = tmp_path / original.name
    copy.write_text(text.replace("127.0.0.1:8458", "127.0.0.1:0").replace(":8457", ":0"))
    ledger = tmp_path / "work" / "examples" / "ledger"
    shutil.copytree(EXAMPLES / "ledger", ledger, ignore=shutil.ignore_patterns("*.attestation"))
    (tmp_path / "ledger").symlink_to(ledger)
    return copy


def ignored_in(directory: str, name: str) -> bool:
    """Whether .gitignore ignores ``name`` in ``directory`` (a pattern anchored there)."""
    for line in (ROOT / ".gitignore").read_text().splitlines():
        pattern = line.strip()
        if pattern.startswith(f"/{directory}/") and fnmatch.fnmatchcase(
            name, pattern.removeprefix(f"/{directory}/")
        ):
            return True
    return False


async def test_the_readme_quickstart_tour_and_fetch_run_as_written(tmp_path: Path) -> None:
    blocks = sh_blocks((ROOT / "README.md").read_text())
    venv, install, serve_line = blocks[0].strip().split(" && ")
    assert venv == "python3 -m venv .venv" and install == ".venv/bin/pip install -q -e ."
    program, command, flag, config = shlex.split(serve_line)
    assert (program, command, flag) == (".venv/bin/snapshot-tracker", "serve", "--config")
    serve = await start_serve(flag, str(quickstart_config(tmp_path, config)))
    assert serve.internal is not None
    try:
        async with httpx.AsyncClient(verify=client_tls(), trust_env=False) as client:
            with trio.fail_after(20):
                while len((await client.get(f"{serve.base}/v1/snapshots")).json()) < 3:
                    await trio.sleep(0.05)
        [tour] = [block for block in blocks if "/v1/snapshots" in block and "fetch" in block]
        work = tmp_path / "work"
        work.mkdir(exist_ok=True)
        for line in commands(tour):
            typed = as_typed_here(line, serve.base, serve.internal)
            with trio.fail_after(60):
                done = await trio.run_process(
                    ["bash", "-o", "pipefail", "-c", typed], cwd=work, capture_stdout=True,
                    capture_stderr=True, check=False,
                )  # fmt: skip
            assert done.returncode == 0, f"{line}\n{done.stderr.decode(errors='replace')}"
            if "/?refresh=0" in line:
                # The status page's text, on a server without a browser (no xdg-open).
                page = done.stdout.decode()
                assert "Best snapshots" in page and "Targets" in page, page
                assert "<" not in page and "&amp;" not in page, page
    finally:
        assert await serve.stop() == 0
    # What the tour writes where it runs (the repository root, as written) is ignored by git.
    written = sorted(p for p in work.iterdir() if p.name != "examples")
    assert {p.name for p in written} >= {"head.bin", "quickstart-ledger", "trusted-ledger"}
    for path in written:
        assert root_ignored(path.name, path.is_dir()), f"the tour leaves {path.name} in the root"
    # shipped: what git tracks there (a tour run in this checkout before wrote statements)
    shipped = {
        p.name for p in (EXAMPLES / "ledger").iterdir() if not p.name.endswith(".attestation")
    }
    beside = [p.name for p in (work / "examples" / "ledger").iterdir() if p.name not in shipped]
    assert beside, "the tour's attest wrote no statement"
    for name in beside:
        assert ignored_in("examples/ledger", name), f"the tour leaves examples/ledger/{name}"
    trusted = sorted(path.name for path in (work / "trusted-ledger").glob("*.tar.zst"))
    assert trusted == sorted(path.name for path in (work / "quickstart-ledger").glob("*.tar.zst"))
    fetched = sorted(path.name for path in (work / "quickstart-ledger").glob("*.tar.zst"))
    newest = "incremental-snapshot-1000-1200-4mw8VCyuMF11mUnaehdwtVDZ4z3VnoLzmhczSrUFoqLz.tar.zst"
    full = "snapshot-1000-DSDfJEwPp5cKu4Mgf2hZkPQ3abRDccBgmvS3CFJXc2Yt.tar.zst"
    assert fetched == [newest, full]
    for name in fetched:
        on_disk = (EXAMPLES / "ledger" / name).read_bytes()
        assert (work / "quickstart-ledger" / name).read_bytes() == on_disk


def test_the_example_ledger_is_what_make_ledger_writes(tmp_path: Path) -> None:
    """examples/ledger/ can be remade: the script writes the same bytes again."""
    import subprocess

    subprocess.run([sys.executable, str(EXAMPLES / "make_ledger.py"), str(tmp_path)], check=True)
    # (statements the tour's `attest` wrote beside them are the operator's, not shipped)
    shipped = {path.name: path.read_bytes() for path in (EXAMPLES / "ledger").glob("*.tar.zst")}
    made = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    assert made == shipped
