"""Which sources of one archive may give pieces of one copy, by the SHA-256 each publishes.

Sources of the same name and size are taken for byte-identical (the whole-file checks are
the gate, docs/http-api.md#trust); where sources publish the SHA-256 of their copy (another
tracker's listing carries the digest of its verified copy), two that publish different ones
hold different files, and pieces of one copy come only from sources that agree. A source
that publishes none is not refused by it: the checks of the whole file still judge its
bytes. The digest that counts is the first source's (the one already answering), else the
best-ranked source's that publishes one; sources that publish another are refused with the
reason (docs/architecture.md, "A refresh from several sources").

A published digest is a claim from the network: it only ever keeps sources apart, it is
never shown as the tracker's own (docs/http-api.md, "Verified archives").
"""

from __future__ import annotations

from collections.abc import Sequence


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
