"""``HoldingProxy``: a real HTTP proxy on 127.0.0.1 in front of SeaweedFS that holds the
first S3 request a test picks until the test lets it go, so a test can make a moment exact
(a stop that meets a commit, an instance paused between two commits)."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Callable

import aiohttp
from aiohttp import web

from tests.support.threaded_model import ThreadedModel

# Not forwarded: what the hop itself decides (the body is forwarded whole, as read).
_REQUEST_HOP = frozenset({"host", "content-length", "transfer-encoding", "connection", "expect"})
_ANSWER_HOP = frozenset({"content-length", "transfer-encoding", "connection", "content-encoding"})


class HoldingProxy(ThreadedModel):
    """Forwards every request to ``target``; holds the first one ``hold`` picks.

    ``arrived`` is set when that request came in, and it is sent on once ``release`` is
    set. Runs its own event loop in a thread (``ThreadedModel``), so the test can wait on
    the agent meanwhile.
    """

    def __init__(self, target: str, hold: Callable[[web.Request], bool]) -> None:
        super().__init__()
        self.target = target
        self.hold = hold
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.forwarded = threading.Event()  # the held request was sent on and answered
        self._session: aiohttp.ClientSession | None = None

    def stop(self) -> None:
        self.release.set()
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        super().stop()

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=True)
        await super()._start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None  # cleaned up: ThreadedModel.stop only stops the loop
        if self._session is not None:
            await self._session.close()

    def _routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._handle)  # answers Expect: 100-continue

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if not self.arrived.is_set() and self.hold(request):
            self.arrived.set()
            await asyncio.to_thread(self.release.wait, 120)
            try:
                return await self._forward(request, body)
            finally:
                self.forwarded.set()
        return await self._forward(request, body)

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _REQUEST_HOP}
        assert self._session is not None
        async with self._session.request(
            request.method, self.target + request.path_qs, headers=headers, data=io.BytesIO(body)
        ) as answer:
            payload = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in _ANSWER_HOP}
            if request.method == "HEAD" and "Content-Length" in answer.headers:
                # No body follows a HEAD: its Content-Length is the object's size.
                kept["Content-Length"] = answer.headers["Content-Length"]
            return web.Response(status=answer.status, body=payload, headers=kept)
