"""A request body sent by :func:`tracker.net.exchange.stream` is one :class:`WholeBody`,
whose iterator is a plain object: a request cancelled while it sends leaves no half-run async
generator for the garbage collector (trio warns of one, and the suite fails on warnings)."""

from __future__ import annotations

import inspect

import httpx
import trio

from tracker.net.exchange import WholeBody, stream


async def test_a_whole_body_yields_its_bytes_once_from_no_async_generator() -> None:
    body = WholeBody(b'{"a":1}')
    iterator = body.__aiter__()
    assert not inspect.isasyncgen(iterator)
    assert [chunk async for chunk in iterator] == [b'{"a":1}']
    assert [chunk async for chunk in iterator] == []  # spent
    assert [chunk async for chunk in body] == [b'{"a":1}']  # a new iterator: a retry resends


async def test_a_post_sends_its_json_as_one_whole_body() -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=await request.aread())

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    async with client, stream(client, "POST", "http://rpc.test/", json={"id": 1}) as response:
        assert await response.aread() == b'{"id":1}'
    [request] = seen
    assert isinstance(request.stream, WholeBody)
    assert request.headers["content-length"] == "8"
    assert request.headers["content-type"] == "application/json"


async def test_a_get_keeps_httpxs_own_empty_body() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        assert not isinstance(request.stream, WholeBody)
        return httpx.Response(204)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with trio.fail_after(5):
            async with stream(client, "GET", "http://rpc.test/") as response:
                assert response.status_code == 204
