"""What a request asked, read once at the web boundary (tracker/proxy/ask.py), and the byte
path's answers, framework-free (tracker/serving/httpanswer.py, tracker/web/delivery.py)."""

from __future__ import annotations

import subprocess
import sys

from tracker.proxy.ask import ask_of
from tracker.proxy.decisions import Asked
from tracker.serving.httpanswer import Answer, redirect_answer, text_answer
from tracker.serving.responsebodies import BytesBody
from tracker.web.delivery import to_response


def test_an_ask_holds_the_facts_the_forwarded_headers_and_every_forwarded_line() -> None:
    ask = ask_of(
        "GET",
        [
            ("Host", "t"),
            ("Range", "bytes=0-9"),
            ("range", "bytes=5-"),
            ("If-None-Match", '"x"'),
            ("Cookie", "secret"),
            ("User-Agent", "aria2/1.37"),
        ],
    )
    # Two Range lines are no range, here as in a file's answer (which reads every line).
    assert ask.asked == Asked("GET", range=None, conditional=True, user_agent="aria2/1.37")
    assert dict(ask.headers) == {"if-none-match": '"x"'}
    assert ask.method == "GET"  # what a file's answer reads of it (serving.fileresponse)
    lines = [("range", "bytes=0-9"), ("range", "bytes=5-"), ("if-none-match", '"x"')]
    assert list(ask.lines) == lines


def test_a_heads_range_goes_to_no_source() -> None:
    """A range applies to a GET only: a HEAD with ``Range`` (and ``If-Range``) was relayed
    with them and answered the source's 206, where a file's answer (a cache hit, a local
    file) is its 200."""
    ask = ask_of("HEAD", [("Range", "bytes=0-9"), ("If-Range", '"x"'), ("If-None-Match", '"y"')])
    assert ask.asked.range is None
    assert dict(ask.headers) == {"if-none-match": '"y"'}


def test_a_plain_ask_is_plain() -> None:
    ask = ask_of("HEAD", [("Accept", "*/*")])
    assert ask.asked.plain and not ask.headers and ask.connection is None


async def test_an_answer_becomes_a_response_with_exactly_its_headers() -> None:
    response = to_response(text_answer(502, "no source"))
    assert (response.status_code, await response.get_data()) == (502, b"no source\n")
    assert dict(response.headers) == {"content-type": "text/plain", "content-length": "10"}
    assert response.timeout is None
    redirect = to_response(redirect_answer("/x"))
    assert (redirect.status_code, redirect.headers["location"]) == (303, "/x")
    body = BytesBody(b"abc")
    streamed = to_response(Answer(200, {"content-length": "3"}, body))
    assert streamed.response is body  # handed over untouched (zero-copy placeholders)


def test_the_byte_path_loads_no_web_framework() -> None:
    code = (
        "import sys, tracker.proxy.streamer, tracker.serving.fileresponse, tracker.cache.store; "
        "print(sorted(m for m in ('quart', 'quart_trio', 'werkzeug') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
