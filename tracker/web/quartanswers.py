"""The one place an :class:`~tracker.serving.httpanswer.Answer` becomes a Quart response.

The byte paths (tracker/serving, tracker/cache, tracker/proxy) know no web framework: they
answer with a status, exactly the headers to send and a
:class:`~tracker.serving.responsebodies.Body`.
Quart sends a body it knows as a ``ResponseBody`` untouched (``async with body as chunks``),
so a Body is registered as one: the zero-copy placeholders (tracker/zerocopy/connection.py)
pass through as the very objects the body yields.
"""

from __future__ import annotations

from typing import cast

import quart
from quart.wrappers.response import ResponseBody

from tracker.serving.httpanswer import Answer
from tracker.serving.responsebodies import Body

ResponseBody.register(Body)  # type: ignore[type-abstract]


def to_response(answer: Answer) -> quart.Response:
    """``answer`` as a Quart response: exactly its headers (not Quart's text/html default
    type nor a derived length), no response timeout (downloads last hours,
    docs/architecture.md#traps-of-the-stack, 2)."""
    body = answer.body
    response = quart.Response(body if isinstance(body, bytes) else cast(ResponseBody, body))
    response.status_code = answer.status
    response.headers.clear()
    response.headers.update(answer.headers)
    response.timeout = None
    return response
