"""Assembly (docs/design.md §1.8): responses back into input order, joined as AssembleWith says.

Requests finish in any order; an output is written in input order. A response that
finishes before the one ahead of it waits in memory, and :class:`ReorderBudget` caps the
bytes so waiting across every file of the instance: at the cap no new request starts
until the head of some file's line is written, which always frees room because the head
request is already in flight. :class:`Assembler` applies AssembleWith to each response as
it is written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from agent import metrics
from agent._compat import BytesLike

Write = Callable[[BytesLike], Awaitable[None]]


class RequestOrder:
    """One file's requests in input order: which have finished, and whether every request
    before a given one had finished when it did (then its answer is written at once;
    otherwise it finished early and waits in the :class:`ReorderBudget`)."""

    __slots__ = ("issued", "frontier", "finished")

    def __init__(self) -> None:
        self.issued = 0  # sequence numbers handed out
        self.frontier = 0  # every request before this one has finished
        self.finished: set[int] = set()  # finished requests at or past the frontier

    def issue(self) -> int:
        self.issued += 1
        return self.issued - 1

    def finish(self, seq: int) -> bool:
        """Record ``seq`` as finished; ``True`` if every request before it had finished."""
        self.finished.add(seq)
        while self.frontier in self.finished:
            self.finished.discard(self.frontier)
            self.frontier += 1
        return seq < self.frontier


class ReorderBudget:
    """Bytes of responses that finished early and wait for their turn, capped.

    ``cap_bytes`` bounds the total; a single response larger than the cap is still
    admitted (it must be), but nothing new starts while it waits.
    """

    def __init__(self, cap_bytes: int) -> None:
        if cap_bytes < 1:
            raise ValueError("the reorder buffer needs a cap of at least one byte")
        self.cap_bytes = cap_bytes
        self.waiting_bytes = 0
        self.peak_bytes = 0
        self._room = asyncio.Condition()

    async def wait_for_room(self) -> None:
        """Return once fewer than ``cap_bytes`` bytes wait; called before a request starts."""
        if self.waiting_bytes < self.cap_bytes:
            return
        async with self._room:
            await self._room.wait_for(lambda: self.waiting_bytes < self.cap_bytes)

    def hold(self, size: int) -> None:
        """A response of ``size`` bytes finished and waits to be written."""
        self.waiting_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.waiting_bytes)

    async def release(self, size: int) -> None:
        """A held response was written (or dropped): its bytes no longer wait."""
        self.waiting_bytes -= size
        async with self._room:
            self._room.notify_all()


class Assembler:
    """Writes one output's responses in order, joined as ``AssembleWith`` says.

    ``None``: bodies concatenated as they are. ``Line``: each body followed by ``\\n``
    unless it already ends with one (decision: no blank lines where a model already
    ends its answer with a newline; an empty body becomes one ``\\n``).
    """

    __slots__ = ("_write", "_line", "bytes_written")

    def __init__(self, write: Write, assemble_with: str) -> None:
        self._write = write
        self._line = assemble_with == "Line"
        self.bytes_written = 0

    async def add(self, body: BytesLike) -> None:
        """Write the next response in input order."""
        size = len(body)
        written = self.bytes_written
        if size:
            await self._write(body)
            self.bytes_written += size
        if self._line and (size == 0 or memoryview(body)[size - 1 : size].tobytes() != b"\n"):
            await self._write(b"\n")
            self.bytes_written += 1
        metrics.current().output_bytes.inc(self.bytes_written - written)
