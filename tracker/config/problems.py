"""Config problems as operators read them: one ``key.path: reason`` line each.

cattrs reports a tree of exceptions with notes saying which attribute or item each came from;
:func:`flatten` turns it into (path, message) pairs and :func:`lines` into text, e.g.
``target_groups[0].http_targets.targets[1]: not an absolute http(s) URL: 'foo'``.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import attrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)

from tracker.config.schema import TLSConfig
from tracker.errors import FieldProblems
from tracker.observability.redact import redact_text

#: A key path: attribute names and list indexes.
Path = tuple[str | int, ...]

#: Keys yaml.v3 derives from the Go TLSConfig field names (it had json tags but no yaml
#: tags before May 2022).
TLS_GO_KEYS = {
    "cafile": "ca_file",
    "certfile": "cert_file",
    "keyfile": "key_file",
    "insecureskipverify": "insecure_skip_verify",
}


#: Problems found across the fields of one object, each with a path relative to it (the
#: exception lives in the one tree, tracker.errors; this is the name the loading raises).
Problems = FieldProblems


def raise_problems(problems: list[tuple[Path, str]]) -> None:
    """Raise :class:`~tracker.errors.FieldProblems` when there are any."""
    if problems:
        raise Problems(problems)


def flatten(exc: BaseException, path: Path) -> list[tuple[Path, str]]:
    if isinstance(exc, ClassValidationError | IterableValidationError):
        found: list[tuple[Path, str]] = []
        for sub in exc.exceptions:
            found += flatten(sub, path + _note_step(sub))
        return found
    if isinstance(exc, ForbiddenExtraKeysError):
        keys = sorted(str(key) for key in exc.extra_fields)
        return [((*path, key), _unknown_key(key, exc.cl)) for key in keys]
    if isinstance(exc, FieldProblems):
        return [(path + sub, message) for sub, message in exc.problems]
    if isinstance(exc, KeyError):
        return [(path, "required key missing")]
    if isinstance(exc, ValueError | TypeError):
        return [(path, str(exc))]
    return [(path, f"invalid value ({exc!r})")]


def _note_step(exc: BaseException) -> Path:
    for note in getattr(exc, "__notes__", []):
        if isinstance(note, AttributeValidationNote):
            return (note.name,)
        if isinstance(note, IterableValidationNote) and isinstance(note.index, int):
            return (note.index,)
    return ()


def _unknown_key(key: str, cls: type) -> str:
    known = [f.name for f in attrs.fields(cls) if f.metadata.get("yaml", True)]
    if cls is TLSConfig:
        known += list(TLS_GO_KEYS)
    close = difflib.get_close_matches(key, known, n=1)
    return f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"


def _format_path(path: Path) -> str:
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else step)
    return text or "(top level)"


def lines(problems: Sequence[tuple[Path, str]]) -> list[str]:
    # Messages quote offending values; URLs in them never show their userinfo or query.
    return [f"{_format_path(path)}: {redact_text(message)}" for path, message in problems]
