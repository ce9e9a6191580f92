"""Lower-case names for the framing headers h11 adds to a response itself.

Quart hands hypercorn every header name in lower case, but when h11 decides a response needs
``Connection: close`` (an HTTP/1.0 client, a client that asked to close, a stopping server)
or ``Transfer-Encoding: chunked``, it writes those names title-cased (``set_comma_header`` in
``h11/_headers.py`` calls ``name.title()``). Some clients match header names
case-sensitively (README.md#clients), so every name the tracker sends is lower case. h11 has
no option for this; :func:`install` wraps the one function that does it, as it is seen by h11's
connection module (assumption 8 of this package's README, canary in
tests/unit/test_zerocopy_unit.py).
"""

from __future__ import annotations

from typing import Any

import h11._connection
import h11._headers

_original = h11._headers.set_comma_header


def _lower_case_set_comma_header(headers: Any, name: bytes, new_values: list[bytes]) -> Any:
    """``set_comma_header`` with ``name`` written as given (lower case), not title-cased."""
    result = _original(headers, name, new_values)
    if not new_values:
        return result
    items = [
        (name if lowered == name else raw, value) for raw, lowered, value in result._full_items
    ]
    return h11._headers.normalize_and_validate(items)


def install() -> None:
    """Make h11 write the framing headers it adds in lower case (idempotent)."""
    h11._connection.set_comma_header = _lower_case_set_comma_header  # type: ignore[attr-defined]
