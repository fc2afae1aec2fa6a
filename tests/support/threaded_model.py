"""A model server written in the test itself: aiohttp on 127.0.0.1, on an event loop of its
own in a thread, so a test's own loop (or a subprocess agent) can talk to it while the test
reads what it saw. Subclasses answer ``POST /invocations``; ``GET /ping`` answers 200."""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web

from tests.support.servers import HOST


class ThreadedModel:
    """Start with :meth:`start`, stop with :meth:`stop`; :attr:`url` once started."""

    ping_text = "ok"
    max_body_bytes = 64 << 20  # aiohttp's client_max_size: the largest body it accepts

    def __init__(self) -> None:
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application(client_max_size=self.max_body_bytes)
        self._routes(app)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def _routes(self, app: web.Application) -> None:
        app.router.add_get("/ping", self._ping)
        app.router.add_post("/invocations", self._invocations)

    async def _ping(self, request: web.Request) -> web.Response:
        return web.Response(text=self.ping_text)

    async def _invocations(self, request: web.Request) -> web.Response:
        raise NotImplementedError
