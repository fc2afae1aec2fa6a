"""The two model servers of ``bench.e2e``: ``python -m bench.models --kind service|instant``.

Both speak the part of the SageMaker contract the agent uses (``GET /ping``, ``GET
/execution-parameters`` → 404 so the job's values hold, ``POST /invocations``) and do as
little as possible per request, so what is measured is the client, not the server:

* ``service``: each invocation sleeps ``--base-ms`` (2) plus ``--ms-per-mib`` (20) per MiB
  of body before it answers: a model with a fixed service time that sleeps, not computes.
  ``--workers N`` serves at most N invocations at once (others queue, as on a model with
  N workers); 0, the default, serves every request it is sent at once, so the client's
  concurrency is the model's and any gap in the client's pipeline shows in the throughput.
* ``instant``: answers at once; what remains is the client's cost per request and per byte.

The answer depends on the request's ``Content-Type`` (the job's ``ContentType``):
``text/csv`` gets one short line (``1\\n``) per input line, ``application/octet-stream``
gets its body back (the memory scenario: output as big as input), anything else one short
line per request.

It prints ``listening on http://HOST:PORT`` once it accepts connections (``--port 0``: the
kernel picks the port). ``GET /_stats`` returns the invocation count, body bytes and the
seconds of service time slept (``busy_seconds``), so a benchmark can tell how busy the
model was kept, and ``in_flight_seconds``, the integral of the invocations in progress
over time (divided by a run's seconds: the mean number in flight); ``POST /_reset``
clears them.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass

from aiohttp import web

from examples.model_server import serve_app

MIB = 1 << 20
MAX_BODY_BYTES = 1 << 30
KINDS = ("service", "instant")
ECHO_TYPE = "application/octet-stream"
BAD_MARKER = b"<BAD-RECORD>"  # a body holding it gets 400 (bench.e2e scenario i)


@dataclass
class Stats:
    """Counters since start or the last ``/_reset``."""

    invocations: int = 0
    body_bytes: int = 0
    busy_seconds: float = 0.0  # service time slept, summed over invocations
    in_flight: int = 0
    max_in_flight: int = 0
    in_flight_seconds: float = 0.0  # the integral of in_flight over time
    changed_at: float = 0.0  # monotonic time in_flight last changed
    first_at: float = 0.0  # monotonic time of the first invocation's arrival
    last_at: float = 0.0  # monotonic time of the last answer

    def step(self, change: int) -> None:
        """An invocation arrived (+1) or was answered (-1)."""
        now = time.monotonic()
        self.in_flight_seconds += self.in_flight * (now - self.changed_at)
        self.changed_at = now
        self.in_flight += change

    def as_json(self) -> dict[str, float | int]:
        return {
            "invocations": self.invocations,
            "body_bytes": self.body_bytes,
            "busy_seconds": round(self.busy_seconds, 6),
            "max_in_flight": self.max_in_flight,
            "in_flight_seconds": round(self.in_flight_seconds, 6),
            "active_seconds": round(max(0.0, self.last_at - self.first_at), 6),
        }


def answer(body: bytes, content_type: str) -> bytes:
    """The model's output for one request (see the module docstring)."""
    if content_type == "text/csv":
        lines = body.count(b"\n") + (1 if body and not body.endswith(b"\n") else 0)
        return b"1\n" * lines
    if content_type == ECHO_TYPE:
        return body
    return b"ok\n"


class Model:
    """The aiohttp application of one model server."""

    def __init__(self, kind: str, base_ms: float, ms_per_mib: float, workers: int) -> None:
        self.kind = kind
        self.base_seconds = base_ms / 1000
        self.seconds_per_byte = ms_per_mib / 1000 / MIB
        self.workers = asyncio.Semaphore(workers) if workers > 0 else None
        self.stats = Stats()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/ping", self.ping)
        app.router.add_get("/execution-parameters", self.no_parameters)
        app.router.add_post("/invocations", self.invocations)
        app.router.add_get("/_stats", self.get_stats)
        app.router.add_post("/_reset", self.reset)
        return app

    async def ping(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def no_parameters(self, request: web.Request) -> web.Response:
        return web.Response(status=404)

    async def invocations(self, request: web.Request) -> web.Response:
        stats = self.stats
        if not stats.invocations:
            stats.first_at = time.monotonic()
        stats.invocations += 1
        stats.step(+1)
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            body = await request.read()
            stats.body_bytes += len(body)
            if self.kind == "service":
                await self._serve(len(body))
            if BAD_MARKER in body:  # bench.e2e scenario i: a record the model cannot read
                return web.Response(status=400, text="cannot read a record\n")
            data = answer(body, request.headers.get("Content-Type", ""))
        finally:
            stats.step(-1)
            stats.last_at = stats.changed_at
        return web.Response(body=data)

    async def _serve(self, size: int) -> None:
        seconds = self.base_seconds + size * self.seconds_per_byte
        if self.workers is None:
            await asyncio.sleep(seconds)
        else:
            async with self.workers:
                await asyncio.sleep(seconds)
        self.stats.busy_seconds += seconds

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.as_json())

    async def reset(self, request: web.Request) -> web.Response:
        self.stats = Stats()
        return web.json_response({})


async def serve(host: str, port: int, model: Model) -> None:
    """Serve until SIGTERM or SIGINT; print the bound address once listening."""
    await serve_app(model.app(), host, port, backlog=1024)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.models",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0: let the kernel pick one")
    parser.add_argument("--base-ms", type=float, default=2.0, help="service time per request")
    parser.add_argument("--ms-per-mib", type=float, default=20.0, help="service time per MiB")
    parser.add_argument("--workers", type=int, default=0, help="0: no limit")
    args = parser.parse_args(argv)
    model = Model(args.kind, args.base_ms, args.ms_per_mib, args.workers)
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - non-Linux
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(args.host, args.port, model))


if __name__ == "__main__":
    main()
