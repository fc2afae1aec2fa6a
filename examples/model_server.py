"""A small model server speaking the SageMaker inference-container contract.

Run it from the repository root::

    python -m examples.model_server                  # http://127.0.0.1:8080, echoes bodies
    python -m examples.model_server --port 0 --behaviour lines

It prints ``listening on http://HOST:PORT`` once it accepts connections (with ``--port 0``
the kernel picks the port, so a test can start it without guessing a free one).

The contract bt-agent relies on:

    GET  /ping                  200 when ready; 503 during a simulated slow start
    GET  /execution-parameters  404, or the JSON given with --execution-parameters
    POST /invocations           the answer of --behaviour, unless a --fault applies

Answers (``behaviour``): ``echo`` sends the body back; ``lines`` answers one line per input
line, the line's length in bytes without its newline (see ``answer_lines``).

Faults (``fault``), for the first ``fault_count`` invocations or, when 0, for every one:
``status`` answers ``status`` (e.g. 500, 429, 400) with a short text body; ``reset`` sends the
headers and half the body, then resets the connection (TCP RST); ``truncated`` does the same
but closes the connection normally, short of the promised Content-Length; ``malformed`` answers
bytes that are not HTTP at all. ``delay_ms`` + a uniform random ``random_delay_ms`` delay every
answer; ``exit_after`` N makes the process exit (status 3) when invocation N+1 arrives, cutting
whatever is in flight: a model that dies mid-job. ``ping_fail_seconds`` makes /ping answer 503
for that long: a slow start.

Test hooks, outside the SageMaker contract (paths starting with ``/_`` are never logged):

    POST /_control  {"fault": "status", "status": 503, "fault_count": 2, ...}
                    changes the named settings (the flags' names, with underscores); a setting
                    of ``fault``/``fault_count`` or ``exit_after`` restarts its count; returns all
    POST /_reset    restores the start-up settings and clears the log and counters
    GET  /_log      {"requests": [...], "max_in_flight": n, "settings": {...}}; each request has
                    its wall-clock ``time``, ``method``, ``path``, ``headers`` (all, as sent, as
                    [name, value] pairs), ``body_bytes``, ``body_sha256``, ``in_flight`` (the
                    invocations in progress, this one included), ``max_in_flight`` so far,
                    ``answer`` and ``done`` (wall-clock time of the answer)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import hashlib
import json
import os
import random
import signal
import socket
import struct
import sys
import time
from typing import Any

from aiohttp import web

BEHAVIOURS = ("echo", "lines")
FAULTS = ("none", "status", "reset", "truncated", "malformed")
MAX_BODY_BYTES = 1 << 30  # MaxPayloadInMB=0 streams bodies of any size; tests stay far below
LOG_ENTRIES = 100_000  # the oldest entries go first, so a long benchmark cannot exhaust memory


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the server does; every field can be changed at run time through ``/_control``."""

    behaviour: str = "echo"
    fault: str = "none"
    fault_count: int = 0
    status: int = 500
    delay_ms: int = 0
    random_delay_ms: int = 0
    exit_after: int = 0
    ping_fail_seconds: float = 0.0
    execution_parameters: dict[str, Any] | None = None

    def changed(self, changes: dict[str, Any]) -> Settings:
        """A copy with ``changes`` applied; ValueError names any bad field or value."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        problems = [f"unknown setting {k!r}" for k in changes if k not in fields]
        for name, value in changes.items():
            if name in ("behaviour", "fault"):
                allowed = BEHAVIOURS if name == "behaviour" else FAULTS
                if value not in allowed:
                    problems.append(f"{name} must be one of {', '.join(allowed)}")
            elif name == "status":
                if not (isinstance(value, int) and 100 <= value <= 599):
                    problems.append("status must be an HTTP status code, 100-599")
            elif name == "execution_parameters":
                if value is not None and not isinstance(value, dict):
                    problems.append("execution_parameters must be an object or null")
            elif name in fields and not (
                isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
            ):
                problems.append(f"{name} must be a number >= 0")
        if problems:
            raise ValueError("; ".join(problems))
        return dataclasses.replace(self, **changes)


def answer_lines(body: bytes) -> bytes:
    """One line per input line (a last line without newline counts): its length in bytes."""
    lines = body.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return b"".join(b"%d\n" % len(line) for line in lines)


class ModelServer:
    """The request handlers and their state; one instance per process."""

    def __init__(self, settings: Settings) -> None:
        self.initial = settings
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        self.settings = self.initial
        self.log: collections.deque[dict[str, Any]] = collections.deque(maxlen=LOG_ENTRIES)
        self.invocations = 0
        self.fault_base = self.exit_base = 0
        self.max_in_flight = self.in_flight  # requests still running keep counting
        self.ready_at = time.monotonic() + self.settings.ping_fail_seconds

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/ping", self.ping)
        app.router.add_get("/execution-parameters", self.execution_parameters)
        app.router.add_post("/invocations", self.invocations_handler)
        app.router.add_post("/_control", self.control)
        app.router.add_post("/_reset", self.reset_handler)
        app.router.add_get("/_log", self.log_handler)
        return app

    def _record(self, request: web.Request, body: bytes) -> dict[str, Any]:
        entry = {
            "time": time.time(),
            "method": request.method,
            "path": request.path,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
            "body_bytes": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "answer": None,
            "done": None,
        }
        self.log.append(entry)
        return entry

    async def ping(self, request: web.Request) -> web.Response:
        entry = self._record(request, b"")
        ready = time.monotonic() >= self.ready_at
        entry["answer"], entry["done"] = (200 if ready else 503), time.time()
        return web.Response(status=200 if ready else 503, text="ok\n" if ready else "starting\n")

    async def execution_parameters(self, request: web.Request) -> web.Response:
        entry = self._record(request, b"")
        params = self.settings.execution_parameters
        entry["answer"], entry["done"] = (404 if params is None else 200), time.time()
        if params is None:
            return web.Response(status=404, text="no execution parameters\n")
        return web.json_response(params)

    async def invocations_handler(self, request: web.Request) -> web.StreamResponse:
        self.invocations += 1
        s = self.settings
        if s.exit_after and self.invocations - self.exit_base > s.exit_after:
            print(f"model_server: exiting after {s.exit_after} invocations", file=sys.stderr)
            sys.stderr.flush()
            os._exit(3)
        nth_fault = self.invocations - self.fault_base
        fault = s.fault if s.fault_count == 0 or nth_fault <= s.fault_count else "none"
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        entry: dict[str, Any] | None = None
        try:
            body = await request.read()
            entry = self._record(request, body)
            entry["answer"] = s.status if fault == "status" else 200 if fault == "none" else fault
            delay_ms = s.delay_ms + random.uniform(0, s.random_delay_ms)
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000)
            answer = answer_lines(body) if s.behaviour == "lines" else body
            return await self._answer(request, fault, answer)
        finally:
            self.in_flight -= 1
            if entry is not None:
                entry["done"] = time.time()

    async def _answer(self, request: web.Request, fault: str, answer: bytes) -> web.StreamResponse:
        s = self.settings
        accept = request.headers.get("Accept", "*/*")
        content_type = accept if "*" not in accept else request.content_type
        if fault == "none":
            return web.Response(body=answer, headers={"Content-Type": content_type})
        if fault == "status":
            return web.Response(status=s.status, text=f"fault: status {s.status}\n")
        transport = request.transport
        assert transport is not None
        if fault == "malformed":
            transport.write(b"NOT-HTTP \x00\xff garbled answer\r\n\r\n")
        else:  # reset or truncated: promise the whole answer, send half of it
            promised = max(len(answer), 1)
            head = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
            head += f"Content-Length: {promised}\r\n\r\n"
            transport.write(head.encode("latin-1") + answer[: len(answer) // 2])
            await asyncio.sleep(0.05)  # let the client read the part before the connection goes
            if fault == "reset":
                sock = transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.close()
        return web.Response()  # never sent: aiohttp sees the connection closed and moves on

    async def control(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object of settings")
            self.settings = self.settings.changed(changes)
        except ValueError as error:
            return web.json_response({"error": str(error)}, status=400)
        if {"fault", "fault_count"} & changes.keys():
            self.fault_base = self.invocations
        if "exit_after" in changes:
            self.exit_base = self.invocations
        if "ping_fail_seconds" in changes:
            self.ready_at = time.monotonic() + self.settings.ping_fail_seconds
        return web.json_response(dataclasses.asdict(self.settings))

    async def reset_handler(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response(dataclasses.asdict(self.settings))

    async def log_handler(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "requests": list(self.log),
                "invocations": self.invocations,
                "max_in_flight": self.max_in_flight,
                "settings": dataclasses.asdict(self.settings),
            }
        )


async def serve(host: str, port: int, settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT; print the bound address once listening."""
    await serve_app(ModelServer(settings).app(), host, port)


async def serve_app(app: web.Application, host: str, port: int, *, backlog: int = 128) -> None:
    """Serve ``app`` until SIGTERM or SIGINT; print ``listening on http://HOST:PORT`` once up.

    ``port`` 0 lets the kernel choose; the line says which, for whoever started us.
    """
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    await web.SockSite(runner, sock, backlog=backlog).start()
    print(f"listening on http://{host}:{sock.getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m examples.model_server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0: let the kernel pick one")
    parser.add_argument("--behaviour", choices=BEHAVIOURS, default="echo")
    parser.add_argument("--fault", choices=FAULTS, default="none")
    parser.add_argument(
        "--fault-count",
        type=int,
        default=0,
        metavar="N",
        help="only the first N invocations get the fault (0: all)",
    )
    parser.add_argument("--status", type=int, default=500, help="the status of --fault status")
    parser.add_argument("--delay-ms", type=int, default=0)
    parser.add_argument("--random-delay-ms", type=int, default=0)
    parser.add_argument("--exit-after", type=int, default=0, metavar="N")
    parser.add_argument("--ping-fail-seconds", type=float, default=0.0)
    parser.add_argument("--execution-parameters", type=json.loads, default=None, metavar="JSON")
    args = vars(parser.parse_args(argv))
    host, port = args.pop("host"), args.pop("port")
    try:
        settings = Settings().changed(args)
    except ValueError as error:
        parser.error(str(error))
    try:
        import uvloop  # the loop bt-agent itself runs on, when installed

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(host, port, settings))


if __name__ == "__main__":
    main()
