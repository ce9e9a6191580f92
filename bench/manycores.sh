#!/usr/bin/env bash
# The accounts proof on a many-core host, in one command (bench/README.md, "On a many-core
# host"): the host described, the default run with its yardstick, then each what-if against
# the default, alternating, on the same machine.
#
#   bench/manycores.sh wheels      # here, with network: the wheels a bare host lacks, in .whl/
#   bench/manycores.sh run         # there: .whl/ into /tmp/site where the libraries lack, then
#                                  # measures
#
# Environment: ACCOUNTS (default 16000000), OUT (default bench/out/manycores), PY (default
# python3), WHATIFS (space-separated --set assignments; default below), PYVER (wheels: 3.12).
# Writes host.txt, full.txt and whatifs.txt under OUT; each what-if line is one run's
# "proof alone" line and what the check's thread waited for.
set -uo pipefail
cd "$(dirname "$0")/.."

ACCOUNTS=${ACCOUNTS:-16000000}
OUT=${OUT:-bench/out/manycores}
PY=${PY:-python3}
# What the last runs pointed at (bench/README.md, "Level `accounts` on 16 cores again"): the
# raw chunks' SHA-256 apart, larger raw chunks, both, the second read's raw and decoded pieces
# ahead, more blocks waiting for their BLAKE3.
WHATIFS=${WHATIFS:-archive.archivecheck.SHA_APART=1 archive.archivecheck.READ_SIZE=4194304 archive.reread.AHEAD=8 archive.reread.PIECES_AHEAD=8 archive.binding.WAITING=16}
# What the proof needs beyond what such a host's image holds (numpy, numba, llvmlite, attrs,
# idna and sortedcontainers are there), and py-spy to sample it.
WHEELS="trio outcome sniffio zstandard blake3 lz4 cryptography cffi pycparser base58 py-spy"

wheels() {
  mkdir -p .whl
  grep -qs '^/.whl/$' .git/info/exclude || echo /.whl/ >>.git/info/exclude
  local platforms=()
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
    manylinux2014_x86_64 manylinux1_x86_64 manylinux_2_34_x86_64 manylinux_2_5_x86_64; do
    platforms+=(--platform "$p")
  done
  # shellcheck disable=SC2086  # one word a wheel
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${PYVER:-3.12}" \
    --implementation cp "${platforms[@]}" -d .whl $WHEELS
  # abi3 and pure-Python wheels name no Python version: keep one of each name
  ls .whl
}

run() {
  # the wheels only where the proof's libraries are missing (a bare host), never over a venv
  if ! $PY -c "import trio, zstandard, blake3, lz4, base58, cryptography" 2>/dev/null &&
    compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
  fi
  export PYTHONUNBUFFERED=1
  mkdir -p "$OUT"
  { date -u; nproc; lscpu; free -g; $PY -V; } >"$OUT/host.txt" 2>&1
  $PY bench/accounts.py --accounts "$ACCOUNTS" --runs 1 >"$OUT/full.txt" 2>&1 || {
    tail -20 "$OUT/full.txt"
    exit 1
  }
  grep -E '^(ratio|cores used|proof alone|stages|peak)' "$OUT/full.txt"
  : >"$OUT/whatifs.txt"
  for what in $WHATIFS; do
    for side in default "$what"; do
      local flags=()
      [ "$side" = default ] || flags=(--set "$side")
      {
        echo "== $side"
        $PY bench/accounts.py --accounts "$ACCOUNTS" --proof-only --runs 1 "${flags[@]}" 2>&1 |
          grep -E '^proof alone|^stages|waited'
      } | tee -a "$OUT/whatifs.txt"
    done
  done
}

case "${1:-}" in
wheels) wheels ;;
run) run ;;
*)
  echo "usage: bench/manycores.sh wheels|run" >&2
  exit 2
  ;;
esac
