"""Where the metrics go: ``/metrics`` served while the run lasts, and the Pushgateway.

``MetricsServer`` answers ``GET /metrics`` on the run's own event loop (aiohttp), with
the body prometheus-client writes. ``Pusher`` PUTs the same body to a Pushgateway every
``interval_seconds`` and once more when it closes, under the grouping key ``job`` (the
transform job's name) and ``instance`` (this instance's index), so the last values of a
batch run stay after its process is gone (docs/design.md §8). Neither ever fails the
run: a push that fails is logged (once per kind of failure) and tried again next time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from types import TracebackType

import aiohttp
from aiohttp import web

from agent.errors import BtAgentError
from agent.metrics import CONTENT_TYPE_LATEST, Metrics

log = logging.getLogger("agent.metrics")

PUSH_TIMEOUT_SECONDS = 10.0


class MetricsPortError(BtAgentError):
    """``/metrics`` cannot listen where it was asked to: exit 1, as for a model port that
    is taken (the port may be free on the next try; nothing was touched yet)."""


class MetricsServer:
    """``GET /metrics`` on ``address:port`` while the context lasts (``port`` 0: any free
    port; ``self.port`` is the one taken)."""

    def __init__(self, metrics: Metrics, address: str, port: int) -> None:
        self.metrics = metrics
        self.address = address
        self.port = port
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> MetricsServer:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.address, self.port)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            raise MetricsPortError(
                f"cannot serve /metrics on {self.address}:{self.port} "
                f"({error.strerror or error}); choose another Agent.MetricsPort or "
                "--metrics-port, or 0 for any free port"
            ) from error
        self._runner = runner
        for address in runner.addresses:
            if isinstance(address, tuple):
                self.port = int(address[1])
                break
        shown = f"[{self.address}]" if ":" in self.address else self.address
        log.info("metrics at http://%s:%d/metrics", shown, self.port)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        response = web.Response(body=self.metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response


def push_url(gateway: str, job: str, instance: int) -> str:
    """The Pushgateway's address for this instance's group: ``/metrics/job/<job>/instance/
    <index>`` (a job name is letters, digits and hyphens: no escaping is needed, but it is
    quoted anyway)."""
    job_part = urllib.parse.quote(job, safe="")
    return f"{gateway}/metrics/job/{job_part}/instance/{instance}"


class Pusher:
    """Pushes the metrics every ``interval_seconds`` while the context lasts, and at its end."""

    def __init__(
        self, metrics: Metrics, gateway: str, job: str, instance: int, interval_seconds: float
    ) -> None:
        self.metrics = metrics
        self.gateway = gateway
        self.url = push_url(gateway, job, instance)
        self.interval_seconds = interval_seconds
        self.pushes = 0  # successful pushes
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing: str | None = None  # the last failure logged, so it is logged once

    async def __aenter__(self) -> Pusher:
        timeout = aiohttp.ClientTimeout(total=PUSH_TIMEOUT_SECONDS)
        self._session = aiohttp.ClientSession(timeout=timeout)
        self._task = asyncio.create_task(self._loop())
        log.info("metrics pushed to %s every %g s", self.url, self.interval_seconds)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            # The last values, whatever ended the run (a stop included): shielded, and
            # bounded by the push's own timeout.
            await asyncio.shield(self.push())
        finally:
            if self._session is not None:
                await self._session.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_seconds)
            await self.push()

    async def push(self) -> bool:
        """One push of every metric; False (and logged) when it failed."""
        assert self._session is not None
        body = self.metrics.exposition()
        headers = {"Content-Type": CONTENT_TYPE_LATEST}
        try:
            async with self._session.put(self.url, data=body, headers=headers) as response:
                if response.status // 100 == 2:
                    self.pushes += 1
                    if self._failing is not None:
                        log.info("metrics pushed to %s again", self.gateway)
                        self._failing = None
                    return True
                problem = f"the Pushgateway answered {response.status} {response.reason}"
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            problem = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        if problem != self._failing:
            log.warning(
                "cannot push metrics to %s (%s); the run goes on, and the next push is "
                "tried in %g s",
                self.gateway,
                problem,
                self.interval_seconds,
            )
            self._failing = problem
        return False
