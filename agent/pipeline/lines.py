"""``Agent.RequireLinePerRecord``: each answer holds exactly one line per record sent
(docs/design.md §2.6, README "The job file").

A line ends at ``\\n`` (so ``\\r\\n`` ends one line too); the last line's ``\\n`` is
optional, and an empty answer has no line. The rule is checked on the model's answer as
read, before DataProcessing's join, by :func:`line_rule_problem`, which only says whether
an answer breaks it and why: the pipeline decides what a broken answer costs (today the
file fails with :class:`LinePerRecordError`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from agent._compat import BytesLike
from agent.errors import BtAgentError

# Lines of a larger answer are counted in a thread, so the event loop keeps serving the
# other requests: counting runs at about 1.5 GB/s, so 1 MiB costs under a millisecond.
LINE_COUNT_INLINE_BYTES = 1 << 20
_CHUNK = 1 << 20  # a memoryview is counted a chunk at a time (never copied whole)


def count_lines(data: BytesLike) -> int:
    """How many lines ``data`` holds: its ``\\n`` bytes, plus one for a last line without one."""
    size = len(data)
    if not size:
        return 0
    if isinstance(data, memoryview):
        view = data.cast("B") if data.format != "B" or data.ndim != 1 else data
        newlines = sum(
            bytes(view[at : at + _CHUNK]).count(b"\n") for at in range(0, view.nbytes, _CHUNK)
        )
        return newlines + (view[-1] != 0x0A)
    return data.count(b"\n") + (data[-1] != 0x0A)


def line_rule_problem(answer: BytesLike, records: int) -> str | None:
    """``None`` when ``answer`` holds one line per record of the ``records`` sent; else why not."""
    lines = count_lines(answer)
    if lines == records:
        return None
    return (
        f"the answer has {lines} line{_s(lines)} for {records} record{_s(records)} "
        "(Agent.RequireLinePerRecord)"
    )


@dataclass(slots=True)
class RecordSpan:
    """The records of one request body: where they are in their file.

    ``first`` is the 0-based index of the body's first record among the file's records,
    ``start``/``end`` its byte range in the (uncompressed) input. A streamed body's count
    and end are known only once it has been read to its end: ``close`` gives them.
    """

    uri: str
    first: int
    start: int
    end: int = -1
    records: int = -1
    _known: asyncio.Event | None = None

    def close(self, records: int, end: int) -> None:
        self.records, self.end = records, end
        if self._known is not None:
            self._known.set()

    async def wait(self) -> None:
        """Until ``close`` was called (at once for a whole body)."""
        if self.records < 0:
            if self._known is None:
                self._known = asyncio.Event()
            await self._known.wait()

    def __str__(self) -> str:
        """``s3://b/in/x.csv records 1000-1999 (bytes [a, b))``."""
        if self.records == 0:
            which = "no records"
        elif self.records == 1:
            which = f"record {self.first}"
        else:
            which = f"records {self.first}-{self.first + self.records - 1}"
        return f"{self.uri} {which} (bytes [{self.start}, {self.end}))"


class LinePerRecordError(BtAgentError):
    """An answer broke ``Agent.RequireLinePerRecord``; the message names the file, the
    request's records and byte range, and both counts."""

    def __init__(self, span: RecordSpan, problem: str) -> None:
        super().__init__(f"{span}: {problem}")
        self.span = span
        self.problem = problem


async def check_line_per_record(answer: BytesLike, span: RecordSpan) -> None:
    """Raise ``LinePerRecordError`` when ``answer`` breaks the rule for ``span``'s records."""
    await span.wait()
    if len(answer) < LINE_COUNT_INLINE_BYTES:
        problem = line_rule_problem(answer, span.records)
    else:
        problem = await asyncio.to_thread(line_rule_problem, answer, span.records)
    if problem is not None:
        raise LinePerRecordError(span, problem)


def _s(count: int) -> str:
    return "" if count == 1 else "s"
