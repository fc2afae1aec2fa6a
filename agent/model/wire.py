"""The bytes of one exchange with the model: request bodies as aiohttp sends them (a
buffer, or a source streamed chunk by chunk), and answer bodies read under a cap.

An answer is held in one buffer with no second copy, and never more than the cap is read:
see :func:`read_capped`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TypeAlias

import aiohttp
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload

from agent.errors import BtAgentError

_READ_BYTES = 1 << 20  # the most one read of an answer's body asks for

BodySource: TypeAlias = Callable[[], AsyncIterator[bytes]]
RequestBody: TypeAlias = bytes | bytearray | memoryview | BodySource


class BufferPayload(Payload):
    """A bytes-like body, sent without a copy (aiohttp's BytesPayload warns above 1 MiB)."""

    _autoclose = True

    def __init__(self, value: bytes | bytearray | memoryview) -> None:
        super().__init__(value)
        self._size = memoryview(value).nbytes

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytes(self._value).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await writer.write(self._value)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        view = memoryview(self._value)
        await writer.write(view if content_length is None else view[:content_length])


class SourceFailed(BtAgentError):
    """The body's source (not the model) failed: not a reason to retry."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class AttemptStream:
    """One attempt's chunked body, opened from its source; notes the source's own errors."""

    def __init__(self, source: BodySource) -> None:
        self.stream = source()
        self.error: Exception | None = None
        self.started = False
        self.chunks = self._chunks()

    async def _chunks(self) -> AsyncGenerator[bytes, None]:
        self.started = True
        try:
            async for chunk in self.stream:
                yield chunk
        except Exception as error:
            self.error = error
            raise
        finally:
            await self._close_stream()

    async def _close_stream(self) -> None:
        close = getattr(self.stream, "aclose", None)
        if close is not None:
            await close()

    async def close(self) -> None:
        if not self.started:
            await self._close_stream()
        # RuntimeError: aiohttp's writer task is still inside it; its cancellation closes it.
        with contextlib.suppress(RuntimeError):
            await self.chunks.aclose()


class TooLarge(BtAgentError):
    """An answer's body is over ``cap`` bytes: ``size`` is its Content-Length when
    ``declared``, else the bytes read when reading stopped (``cap`` + 1)."""

    def __init__(self, size: int, cap: int, *, declared: bool) -> None:
        if declared:
            text = f"Content-Length {size} bytes, over the {cap}-byte cap"
        else:
            text = f"{size} bytes arrived, over the {cap}-byte cap; reading stopped there"
        super().__init__(text)
        self.size, self.cap, self.declared = size, cap, declared


async def read_capped(response: aiohttp.ClientResponse, cap: int) -> bytearray:
    """The body of ``response``, at most ``cap`` bytes, in one buffer and no other copy.

    A Content-Length over ``cap`` fails before any byte is read (unless the body is
    compressed: its length then says nothing of the size decoded). Otherwise the body is
    counted as it arrives and reading stops at ``cap`` + 1 bytes; leaving the response
    then closes its connection, so the rest is never read.
    """
    length = response.content_length
    encoded = "Content-Encoding" in response.headers
    if length is not None and not encoded:
        if length > cap:
            raise TooLarge(length, cap, declared=True)
        data = bytearray(length)  # filled in place: no growth, no copy
    else:
        data = bytearray()
    filled = 0
    content = response.content
    while chunk := await content.read(min(_READ_BYTES, cap + 1 - filled)):
        end = filled + len(chunk)
        if end > cap:
            raise TooLarge(end, cap, declared=False)
        if end <= len(data):
            data[filled:end] = chunk
        else:
            del data[filled:]
            data += chunk
        filled = end
    del data[filled:]  # a body shorter than announced raises in aiohttp; just in case
    return data


async def excerpt(response: aiohttp.ClientResponse, limit: int) -> str:
    """The first ``limit`` bytes of a failed answer's body, decoded for a message."""
    data = bytearray()
    try:
        while len(data) < limit:
            chunk = await response.content.read(limit - len(data))
            if not chunk:
                break
            data += chunk
    except (aiohttp.ClientError, TimeoutError):
        pass  # the status says enough; show what arrived
    return data.decode("utf-8", "replace")
