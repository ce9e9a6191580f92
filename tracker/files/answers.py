"""An HTTP answer without a web framework: what the byte paths return.

The files, the disk cache and the proxy answer with an :class:`Answer` (its status, exactly
the headers to send, its body); tracker/web/answers.py alone turns one into the web
framework's response (docs/architecture.md, "One request's path").
"""

from __future__ import annotations

import attrs

from tracker.files.bodies import Body


@attrs.define
class Answer:
    """Status, headers (lower-case names, exactly these are sent: no derived length, no
    default type) and body (bytes, or a :class:`~tracker.files.bodies.Body` that streams)."""

    status: int
    headers: dict[str, str] = attrs.Factory(dict)
    body: Body | bytes = b""


def text_answer(status: int, reason: str) -> Answer:
    """A one-line plain-text answer (a 502's or 503's reason)."""
    body = (reason + "\n").encode()
    headers = {"content-type": "text/plain", "content-length": str(len(body))}
    return Answer(status, headers, body)


def redirect_answer(location: str) -> Answer:
    """A 303 to ``location`` with an empty body."""
    headers = {"content-type": "text/plain", "content-length": "0", "location": location}
    return Answer(303, headers)
