"""The shape both twins share, for callers that type against either of them."""

from __future__ import annotations

from typing import Protocol

from agent._compat import BytesLike


class BodyLike(Protocol):
    """A request body, or a part of a streamed one (see ``agent.split``)."""

    @property
    def data(self) -> bytes | memoryview: ...
    @property
    def start(self) -> int: ...
    @property
    def end(self) -> int: ...
    @property
    def records(self) -> int: ...
    @property
    def first(self) -> bool: ...
    @property
    def last(self) -> bool: ...
    @property
    def bounds(self) -> bytes | None: ...


class SplitterLike(Protocol):
    """Turns one input's chunks into bodies; made by ``make_splitter(split_type,
    batch_strategy, max_payload_bytes, max_records=0, bounds=False)``."""

    def feed(self, chunk: BytesLike) -> list[BodyLike]: ...
    def finish(self) -> list[BodyLike]: ...


class PackerLike(Protocol):
    """Packs already-cut records under the bound (and the cap on records, if any)."""

    def add(self, record: BytesLike, start: int, end: int) -> BodyLike | None: ...
    def finish(self) -> BodyLike | None: ...
