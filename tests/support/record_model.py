"""A model that knows each record by a token it carries, for the failed-record tests.

Every record holds ``<r:NNNNNN>`` (its number); ``RecordModel`` answers a body with one
line per token, the number, so it finds the records of any body (lines, RecordIO or
TFRecord frames, a SingleRecord payload) without parsing their framing. Told which
records are bad, it answers 400 to any body holding one of them; told a size, it answers
413 to any body over it (a server whose own body limit is below MaxPayloadInMB); it may
also answer 500 to chosen records, or leave their lines out of its answer. It counts what
it answered, by status.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import Counter
from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp import web

from tests.support.threaded_model import ThreadedModel

TOKEN = re.compile(rb"<r:(\d{6})>")


def token(n: int) -> bytes:
    return b"<r:%06d>" % n


def error_lines(data: bytes) -> list[dict[str, Any]]:
    """The entries of an errors file (``<name>.errors.jsonl``), in order."""
    return [orjson.loads(text) for text in data.splitlines()]


class RecordModel(ThreadedModel):
    """``POST /invocations``: 413 over ``refuse_over`` bytes, 400 when a ``bad`` record is in
    the body (its text names the first), else one line per record, its number."""

    ping_text = "ok\n"

    def __init__(self) -> None:
        super().__init__()
        self.bad: frozenset[int] = frozenset()
        self.refuse_over = 0  # 0: no limit
        self.delay_seconds = 0.0  # before each answer
        self.server_error: frozenset[int] = frozenset()  # a body holding one gets 500
        self.short: frozenset[int] = frozenset()  # these records get no line of answer
        self._lock = threading.Lock()
        self.statuses: Counter[int] = Counter()
        self.refused_sizes: list[int] = []

    def set_bad(self, records: Iterable[int]) -> None:
        self.bad = frozenset(records)

    def reset_counts(self) -> None:
        with self._lock:
            self.statuses.clear()
            self.refused_sizes.clear()

    @property
    def requests(self) -> int:
        with self._lock:
            return sum(self.statuses.values())

    def _count(self, status: int, size: int) -> None:
        with self._lock:
            self.statuses[status] += 1
            if status == 413:
                self.refused_sizes.append(size)

    async def _invocations(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        if self.refuse_over and len(body) > self.refuse_over:
            self._count(413, len(body))
            return web.Response(status=413, text=f"body of {len(body)} bytes is too large\n")
        numbers = TOKEN.findall(body)
        for number in numbers:
            if int(number) in self.bad:
                self._count(400, len(body))
                return web.Response(status=400, text=f"cannot read record {int(number)}\n")
            if int(number) in self.server_error:
                self._count(500, len(body))
                return web.Response(status=500, text=f"crashed on record {int(number)}\n")
        self._count(200, len(body))
        lines = [n + b"\n" for n in numbers if int(n) not in self.short]
        return web.Response(body=b"".join(lines), content_type="text/plain")
