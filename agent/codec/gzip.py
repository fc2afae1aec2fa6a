"""Streaming gunzip for ``CompressionType: Gzip`` (docs/design.md §1.5).

An object is one or more gzip members back to back (``cat a.gz b.gz`` is valid gzip, and
so is zero padding between members, which ``gzip -d`` accepts); each is decompressed as
its bytes arrive, and no call yields more than ``out_chunk_bytes``, so a highly
compressed input cannot blow up memory. A zero-byte object decompresses to nothing.
Corrupt or truncated input raises :class:`GzipError` naming the compressed byte offset.

:class:`Gunzip` is the push-style core (``feed``/``finish``) for code that owns its loop;
:func:`gunzip` wraps it for an async iterator of chunks, such as ``Store.read``.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterable, AsyncIterator, Generator, Iterator

from agent._compat import BytesLike
from agent.errors import BtAgentError

OUT_CHUNK_BYTES = 1 << 20
_GZIP_WBITS = 31  # zlib: a gzip header and trailer, not raw deflate or zlib framing


class GzipError(BtAgentError, ValueError):
    """Input that is not valid gzip; ``offset`` counts compressed bytes from the start."""

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(message)
        self.offset = offset
        self.message = message

    def in_file(self, name: str) -> str:
        """The message prefixed with the object it concerns, as users should see it."""
        return f"{name}: {self.message}"


class Gunzip:
    """Decompresses concatenated gzip members fed in chunks of any size.

    ``feed`` returns an iterator that must be exhausted before the next ``feed``;
    ``finish`` raises if the input stopped inside a member.
    """

    def __init__(self, out_chunk_bytes: int = OUT_CHUNK_BYTES) -> None:
        self.out_chunk_bytes = out_chunk_bytes
        self.consumed = 0  # compressed bytes fully taken by the decompressor
        self._inflater = zlib.decompressobj(wbits=_GZIP_WBITS)
        self._in_member = False  # the current member has begun and not ended

    def feed(self, chunk: BytesLike) -> Iterator[bytes]:
        """Decompress ``chunk``, yielding at most ``out_chunk_bytes`` at a time."""
        pending = bytes(chunk) if not isinstance(chunk, bytes) else chunk
        while pending:
            if not self._in_member:
                stripped = pending.lstrip(b"\0")  # padding between members
                self.consumed += len(pending) - len(stripped)
                pending = stripped
                if not pending:
                    return
                self._in_member = True
            pending = yield from self._inflate(pending)

    def _inflate(self, pending: bytes) -> Generator[bytes, None, bytes]:
        """Run one member over ``pending``; return what follows its end (if it ended)."""
        inflater = self._inflater
        while True:
            try:
                data = inflater.decompress(pending, self.out_chunk_bytes)
            except zlib.error as error:
                raise GzipError(
                    self.consumed,
                    f"the input is not valid gzip near compressed byte {self.consumed} ({error}); "
                    "check that CompressionType Gzip is right for this object",
                ) from None
            self.consumed += (
                len(pending) - len(inflater.unconsumed_tail) - len(inflater.unused_data)
            )
            if data:
                yield data
            if inflater.eof:
                rest = inflater.unused_data
                self._inflater = zlib.decompressobj(wbits=_GZIP_WBITS)
                self._in_member = False
                return rest
            pending = inflater.unconsumed_tail
            if not pending and len(data) < self.out_chunk_bytes:
                return b""  # all input taken and nothing more buffered inside

    def finish(self) -> None:
        """Raise ``GzipError`` if the input ended inside a member."""
        if self._in_member:
            raise GzipError(
                self.consumed,
                f"the gzip input is truncated: it ends at compressed byte {self.consumed} "
                "inside a member",
            )


async def gunzip(
    chunks: AsyncIterable[BytesLike], out_chunk_bytes: int = OUT_CHUNK_BYTES
) -> AsyncIterator[bytes]:
    """Decompress an async stream of gzip chunks; see the module docstring."""
    inflater = Gunzip(out_chunk_bytes)
    async for chunk in chunks:
        for data in inflater.feed(chunk):
            yield data
    inflater.finish()
