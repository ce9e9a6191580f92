"""The one rule that says whether two answers for a file are the same file.

Archives of one slot and hash made by different nodes are not byte-identical, and a source
may replace its file between two requests, so bytes of two answers are joined only when
their validators prove they are one file (docs/architecture.md, "Same file"). The rule,
for a ``first`` answer and a ``later`` one (of the same size: callers check sizes):

- **same**: ``first`` has a strong ``ETag`` and ``later`` the same one; or ``first`` has no
  strong ``ETag``, ``later`` the same ``ETag`` header (none, or the same weak one) and both
  the same ``Last-Modified`` date;
- **different**: not the same, and both have a ``Last-Modified`` date that differs, or
  (without two dates) both have an ``ETag`` that differs;
- **unproven**: anything else (no validator in common, or another ``ETag`` with the same
  date: a tracker serving a file from its cache gives it its own ``ETag`` but keeps the
  source's date).

What needs proof (resuming a broken refresh, resuming a download from its state file) takes
only *same*; what checks each answer of a download already going on (its size and sampled
bytes checked besides) refuses only *different*. The rule is symmetric.

**Published digests** (:func:`refusals`): which sources of one archive may give pieces of one
copy. Sources of the same name and size are taken for byte-identical (the whole-file checks
are the gate, docs/http-api.md#trust); where sources publish the SHA-256 of their copy
(another tracker's listing carries the digest of its verified copy), two that publish
different ones hold different files, and pieces of one copy come only from sources that
agree. A source that publishes none is not refused by it: the checks of the whole file still
judge its bytes. The digest that counts is the first source's (the one already answering),
else the best-ranked source's that publishes one; sources that publish another are refused
with the reason (docs/architecture.md, "A refresh from several sources"). A published digest
is a claim from the network: it only ever keeps sources apart, it is never shown as the
tracker's own (docs/http-api.md, "Verified archives").
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence

import attrs

from tracker.core.text import quoted


class Sameness(enum.Enum):
    """What two answers' validators prove about their files."""

    SAME = "same"
    DIFFERENT = "different"
    UNPROVEN = "unproven"


@attrs.frozen
class Validators:
    """The ``ETag`` and ``Last-Modified`` header values of an answer ("" when absent)."""

    etag: str = ""
    last_modified: str = ""

    @classmethod
    def of(cls, headers: Mapping[str, str]) -> Validators:
        """The validators in ``headers`` (lower-case names, as httpx looks them up)."""
        return cls(headers.get("etag", "").strip(), headers.get("last-modified", "").strip())

    @property
    def strong(self) -> bool:
        """True for a strong ``ETag`` (quoted, without ``W/``)."""
        return self.etag.startswith('"')

    def if_range(self) -> str | None:
        """The validator that can prove a later answer is this file: the strong ``ETag``,
        else the ``Last-Modified`` date; None when there is neither."""
        if self.strong:
            return self.etag
        return self.last_modified or None


def sameness(first: Validators, later: Validators) -> Sameness:
    """What the validators of ``first`` and ``later`` prove (see the module)."""
    if later.etag == first.etag and (
        first.strong or (first.last_modified and later.last_modified == first.last_modified)
    ):
        return Sameness.SAME
    if first.last_modified and later.last_modified:
        if first.last_modified != later.last_modified:
            return Sameness.DIFFERENT
        return Sameness.UNPROVEN
    if first.etag and later.etag and first.etag != later.etag:
        return Sameness.DIFFERENT
    return Sameness.UNPROVEN


def not_same_reason(first: Validators, later: Validators) -> str | None:
    """Why ``later`` is not proven to be the file of ``first`` (one line); None when it is."""
    if sameness(first, later) is Sameness.SAME:
        return None
    if first.if_range() is None:
        return "the first answer had neither a strong ETag nor a Last-Modified date"
    if later.etag != first.etag:
        return f"etag {quoted(later.etag)} is not the first answer's {quoted(first.etag)}"
    return (
        f"last-modified {quoted(later.last_modified)} is not the first answer's "
        f"{quoted(first.last_modified)}"
    )


# Published digests.


def reference(published: Sequence[str]) -> str:
    """The digest the others must agree with: the first one published in ``published`` (each
    source's, best first, "" for none); "" when none is."""
    return next((digest for digest in published if digest), "")


def refusals(published: Sequence[str]) -> list[str]:
    """For each source's published SHA-256 (lower-case hex, "" none; the first source
    first, then best first), "" when it may give pieces, else the one-line reason it may
    not: it publishes another digest than :func:`reference`."""
    agreed = reference(published)
    return [
        f"publishes sha256 {digest}, the other sources {agreed}"
        if digest and digest != agreed
        else ""
        for digest in published
    ]
