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

from tests.support.servers import HOST

MIB = 1 << 20

# Not forwarded: what the hop itself decides (the body is forwarded whole, as read).
_REQUEST_HOP = frozenset({"host", "content-length", "transfer-encoding", "connection", "expect"})
_ANSWER_HOP = frozenset({"content-length", "transfer-encoding", "connection", "content-encoding"})


class HoldingProxy:
    """Forwards every request to ``target``; holds the first one ``hold`` picks.

    ``arrived`` is set when that request came in, and it is sent on once ``release`` is
    set. Runs its own event loop in a thread, so the test can wait on the agent meanwhile.
    """

    def __init__(self, target: str, hold: Callable[[web.Request], bool]) -> None:
        self.target = target
        self.hold = hold
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.forwarded = threading.Event()  # the held request was sent on and answered
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)

    def stop(self) -> None:
        self.release.set()
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=True)
        app = web.Application(client_max_size=64 * MIB)
        app.router.add_route("*", "/{tail:.*}", self._handle)  # answers Expect: 100-continue
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

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
