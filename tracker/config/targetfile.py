"""``file_targets``: a file listing sidecar targets, re-read on every scrape.

Two formats: a JSON array of ``"host:port"`` strings, or one ``host:port`` a line with blank
lines and ``#`` comments ignored; the port may be left out (the scheme's), as in
``static_targets`` and the Go tracker's files. One bad entry fails the whole file with an
error naming the line (or array index): silently probing half a fleet would hide the typo.
"""

from __future__ import annotations

import errno

from tracker.core.hosts import is_authority
from tracker.core.smallfiles import read_small
from tracker.core.text import quoted
from tracker.core.untrusted import load_json
from tracker.errors import ProbeError
from tracker.observability.redact import redact_url

DEFAULT_MAX_BYTES = 1024 * 1024


def read_target_file(path: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> list[str]:
    """The ``host[:port]`` targets listed in ``path``, in order, duplicates dropped.

    Blocking: run it in a worker thread. Raises :class:`ProbeError` (one line) when the file
    cannot be read, is larger than ``max_bytes``, is not UTF-8, is invalid JSON, or holds an
    entry that is neither ``host`` nor ``host:port``.
    """
    text = _read(path, max_bytes)
    targets = _json_targets(text, path) if _json_array(text) else _line_targets(text, path)
    return list(dict.fromkeys(targets))


def _json_array(text: str) -> bool:
    """Whether ``text`` is written as a JSON array: ``[`` then a string, ``]`` or a nested
    value (``[`` or ``{``, refused as no string). A line file may begin with ``[`` too:
    ``[fd00::1]:13080``, an IPv6 target (it was read as JSON and refused whole). Pure."""
    opened = text.lstrip()
    return opened.startswith("[") and opened[1:].lstrip()[:1] in ('"', "]", "[", "{")


def is_host_port(text: str) -> bool:
    """True for ``host:port`` or ``[v6addr]:port`` with a port in 1..65535
    (:func:`tracker.core.hosts.is_authority`)."""
    return is_authority(text, port_required=True)


def _read(path: str, max_bytes: int) -> str:
    # Read in a worker thread (the scrape's, bounded: discovery.targetset; the load's:
    # config.files): a FIFO (whose plain open blocks until a writer comes) or a device is
    # refused at once, never waited on (tracker.core.smallfiles).
    try:
        data = read_small(path, max_bytes, follow=True)
    except OSError as exc:
        if exc.errno == errno.EFBIG:
            raise ProbeError(f"{path}: larger than {max_bytes} bytes") from exc
        raise ProbeError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ProbeError(f"{path}: not UTF-8 text (byte {exc.start})") from exc


def _json_targets(text: str, path: str) -> list[str]:
    try:
        entries = load_json(text, ProbeError)
    except ProbeError as exc:
        raise ProbeError(f"{path}: {exc}") from exc
    if not isinstance(entries, list):
        raise ProbeError(f"{path}: not a JSON array of strings")
    targets = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, str) or not is_authority(entry):
            shown = redact_url(entry) if isinstance(entry, str) else entry
            raise ProbeError(f"{path}: [{index}]: not host or host:port: {quoted(shown)}")
        targets.append(entry)
    return targets


def _line_targets(text: str, path: str) -> list[str]:
    targets = []
    for number, line in enumerate(text.split("\n"), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if not is_authority(entry):  # the port may be left out, as in static_targets
            reason = f"not host or host:port: {quoted(redact_url(entry))}"
            raise ProbeError(f"{path} line {number}: {reason}")
        targets.append(entry)
    return targets
