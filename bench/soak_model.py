"""The soak's model server: one answer per record token, and faults the soak switches on.

Started by bt-agent through ``Agent.ModelCommand`` (one process per replica), from the
repository's root (the agent's working directory, which its model commands inherit), so
the model's filtered environment needs no ``PYTHONPATH``::

    python -m bench.soak_model --port P --control FILE --events FILE --faulted DIR --seed S

**Answers.** Every record holds ``<r:NNNNNNNN>`` (a good record) or ``<x:NNNNNNNN>`` (a
poisoned one). A body is answered with one line per good token, ``answer_line(n)``, found
by a regular expression whatever the framing (lines, RecordIO or TFRecord frames, gzip
already undone by the agent), so the answer to a record never depends on how it was batched
or on any fault: the soak computes every ``.out`` from the records it generated
(``bench/soak_data.py``). A body holding a poisoned token is answered ``400 cannot read
record N`` (the first one), at once and every time, so the agent's record isolation
(README "Failed records and 413s") cuts it out with exactly one attempt.

**Faults.** ``--control`` is a JSON file the soak rewrites (atomically) to switch faults
on and off: ``{"500": p, "reset": p, "timeout": p, "slow": p, "413": bytes}``. A body
draws a fault from a hash of the seed and its bytes; a body is faulted at most once across
every replica, instance and restart (a file created with ``O_EXCL`` in ``--faulted``), so a
good record never runs out of the agent's retries and never lands in an errors file.
``413`` refuses a body over that many bytes when it holds more than one record (a 413 on one
record is that record's failure, README "Failed records and 413s"). ``timeout`` answers
after ``--timeout-seconds`` + 0.6 s; ``slow`` 0.2–0.7 s late; ``reset`` sends half the
answer and a TCP RST. Each request appends ``<pid> <outcome> <good tokens>`` to
``--events``, which the soak reads for its progress and its fault counts.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import socket
import struct
import sys

import orjson
from aiohttp import web

from examples.model_server import serve_app

TOKEN = re.compile(rb"<([rx]):(\d{8})>")
FAULTS = ("500", "reset", "timeout", "slow")
_FILL = b"abcdefghijklmnopqrstuvwxyz0123456789" * 8


def answer_line(n: int) -> bytes:
    """The model's answer to the good record numbered ``n`` (40–239 bytes of it, so outputs
    of a few MiB need multipart uploads and shard outputs get assembled)."""
    return b"%08d:%s\n" % (n, _FILL[: 40 + n % 200])


class Control:
    """The fault mix in the control file, read again whenever the file changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.stamp: int | None = None
        self.mix: dict[str, float] = {}

    def current(self) -> dict[str, float]:
        try:
            stamp = os.stat(self.path).st_mtime_ns
        except OSError:
            return self.mix
        if stamp != self.stamp:
            try:
                with open(self.path, "rb") as control:
                    self.mix = orjson.loads(control.read())
                self.stamp = stamp
            except (OSError, orjson.JSONDecodeError):
                pass  # replaced under us: the next request reads it again
        return self.mix


class SoakModel:
    def __init__(self, args: argparse.Namespace) -> None:
        self.control = Control(args.control)
        self.events = os.open(args.events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.faulted = args.faulted
        self.key = args.seed.to_bytes(8, "big")
        self.timeout = args.timeout_seconds
        self.delay = args.delay_ms / 1000

    def note(self, outcome: str, good: int) -> None:
        os.write(self.events, b"%d %s %d\n" % (os.getpid(), outcome.encode(), good))

    def draw(self, body: bytes, mix: dict[str, float]) -> str | None:
        """The fault this body gets, if any: a hash of seed and body picks it, and only the
        first process to claim the body's digest injects it."""
        digest = hashlib.blake2b(body, digest_size=16, key=self.key).digest()
        u = int.from_bytes(digest[:6], "big") / float(1 << 48)
        for kind in FAULTS:
            u -= float(mix.get(kind, 0.0))
            if u < 0:
                break
        else:
            return None
        try:
            os.close(os.open(os.path.join(self.faulted, digest.hex()), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return None
        return kind

    async def invocations(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        tokens = TOKEN.findall(body)
        good = [int(n) for kind, n in tokens if kind == b"r"]
        mix = self.control.current()
        limit = int(mix.get("413", 0))
        if limit and len(body) > limit and len(tokens) > 1:
            self.note("413", 0)
            return web.Response(status=413, text=f"body of {len(body)} bytes is too large\n")
        bad = [int(n) for kind, n in tokens if kind == b"x"]
        if bad:
            self.note("400", 0)
            return web.Response(status=400, text=f"cannot read record {bad[0]}\n")
        fault = self.draw(body, mix) if tokens else None
        answer = b"".join(answer_line(n) for n in good)
        if self.delay:
            await asyncio.sleep(self.delay)
        if fault == "500":
            self.note("500", 0)
            return web.Response(status=500, text="injected fault: status 500\n")
        if fault == "timeout":
            self.note("timeout", 0)
            await asyncio.sleep(self.timeout + 0.6)
            return web.Response(body=answer, content_type="text/plain")
        if fault == "reset":
            self.note("reset", 0)
            return await self.reset(request, answer)
        if fault == "slow":
            await asyncio.sleep(0.2 + (len(body) % 500) / 1000)
        self.note("slow" if fault == "slow" else "ok", len(good))
        return web.Response(body=answer, content_type="text/plain")

    async def reset(self, request: web.Request, answer: bytes) -> web.StreamResponse:
        """Promise the whole answer, send half of it, then reset the connection."""
        transport = request.transport
        assert transport is not None
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
        head += b"Content-Length: %d\r\n\r\n" % max(len(answer), 1)
        transport.write(head + answer[: len(answer) // 2])
        await asyncio.sleep(0.05)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.close()
        return web.Response()  # never sent: the connection is gone

    async def ping(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def parameters(self, request: web.Request) -> web.Response:
        return web.Response(status=404, text="no execution parameters\n")


async def serve(args: argparse.Namespace) -> None:
    model = SoakModel(args)
    app = web.Application(client_max_size=64 << 20)
    app.router.add_get("/ping", model.ping)
    app.router.add_get("/execution-parameters", model.parameters)
    app.router.add_post("/invocations", model.invocations)
    await serve_app(app, "127.0.0.1", args.port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak_model", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control", required=True)
    parser.add_argument("--events", required=True)
    parser.add_argument("--faulted", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--timeout-seconds", type=float, default=2.0)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
