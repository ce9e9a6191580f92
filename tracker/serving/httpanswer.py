"""An HTTP answer without a web framework: what the byte paths return.

The files, the disk cache and the proxy answer with an :class:`Answer` (its status, exactly
the headers to send, its body); tracker/web/delivery.py alone turns one into the web
framework's response (docs/architecture.md, "One request's path").
"""

from __future__ import annotations

import math

import attrs

from tracker.observability.redact import redact_text
from tracker.serving.responsebodies import Body


@attrs.define
class Answer:
    """Status, headers (lower-case names, exactly these are sent: no derived length, no
    default type) and body (bytes, or a :class:`~tracker.serving.responsebodies.Body` that
    streams)."""

    status: int
    headers: dict[str, str] = attrs.Factory(dict)
    body: Body | bytes = b""


#: Seconds a client turned away with 503 is told to wait (``Retry-After``) when the tracker
#: cannot tell when it will have room (docs/http-api.md, "Errors").
RETRY_AFTER = 5
#: The longest ``Retry-After`` the tracker states, whatever it expects.
MAX_RETRY_AFTER = 300


def retry_after(seconds: float | None) -> str:
    """The ``Retry-After`` value (delay-seconds) for a wait of ``seconds`` (None: unknown,
    :data:`RETRY_AFTER`): whole seconds rounded up, from 1 to :data:`MAX_RETRY_AFTER`."""
    if seconds is None or seconds != seconds:  # NaN: unknown
        return str(RETRY_AFTER)
    return str(max(1, math.ceil(min(float(MAX_RETRY_AFTER), seconds))))


def text_answer(status: int, reason: str, *, retry: float | None = None) -> Answer:
    """A one-line plain-text answer (a 502's or 503's reason); a 503 carries ``Retry-After``
    (``retry`` seconds, see :func:`retry_after`). URLs in ``reason`` are masked (a source's
    redirect may name credentials; the answer goes to any client)."""
    body = (redact_text(reason) + "\n").encode()
    headers = {"content-type": "text/plain", "content-length": str(len(body))}
    if status == 503:
        headers["retry-after"] = retry_after(retry)
    return Answer(status, headers, body)


def redirect_answer(location: str) -> Answer:
    """A 303 to ``location`` with an empty body."""
    headers = {"content-type": "text/plain", "content-length": "0", "location": location}
    return Answer(303, headers)
