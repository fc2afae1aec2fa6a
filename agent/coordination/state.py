"""The state prefix (docs/design.md §5): where each state object lives, how it is written
and read, and the stored job summary.

Layout under ``Agent.StateUri`` (default ``<S3OutputPath>/_bt-agent/<TransformJobName>/``)::

    listing.json             the run's listing snapshot: RunId, every input's key, size, ETag
                             (agent.coordination.listing)
    done/<file-id>.json      one record per finished file (Completed or Failed), written only
                             after the file's .out was committed (agent.coordination.records)
    leases/<file-id>.json    Lease coordination: who holds which file (agent.coordination.lease)
    uploads/<file-id>/<h>.json  one per open multipart upload, so orphans can be aborted
    probe/<token>.json       the start-up check of conditional writes (deleted at once)
    shards/<file-id>/<start>-<end>.out   a shard's output (and .errors.jsonl), until its
                             file's .out is assembled (agent.coordination.shards)
    summary.json             the job summary, DescribeTransformJob-like, with RunId (built by
                             agent.coordination.summary, stored and read here)

``<file-id>`` is a digest of the input's URI. A *run* is one listing snapshot (see
``agent.coordination.listing``); completion records carry over between runs: a file
completed with the same input ETag and settings hash is skipped.

``listing.json``, completion batches and ``summary.json`` grow with the number of files:
they are written as compact JSON, and a listing entry holds only what differs from file to
file (``[relative key, size, ETag]``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from agent.job import DataUri
from agent.redact import dumps_scrubbed
from agent.results import COMPLETED, FAILED
from agent.storage import ObjectTooLargeError, PreconditionFailed, StorageError, Store

log = logging.getLogger("agent.state")

FINAL_STATUSES = (COMPLETED, FAILED)
STATE_FORMAT = 1  # "Format" in every state object; bumped on an incompatible change
READS_IN_FLIGHT = 32  # state objects fetched at once
SUMMARY_CHUNK_BYTES = 1 << 20  # summary.json is uploaded in pieces of this size


class StateError(StorageError):
    """A state object is unreadable or from an incompatible agent; the message says which."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class StateLayout:
    """Where each state object lives under the state prefix ``root``."""

    root: DataUri

    def _at(self, *parts: str, directory: bool = False) -> DataUri:
        return self.root.join(*parts, directory=directory)

    @property
    def listing(self) -> DataUri:
        return self._at("listing.json")

    @property
    def summary(self) -> DataUri:
        return self._at("summary.json")

    @property
    def done_prefix(self) -> DataUri:
        return self._at("done", directory=True)

    def done(self, fid: str) -> DataUri:
        return self._at("done", f"{fid}.json")

    @property
    def leases_prefix(self) -> DataUri:
        return self._at("leases", directory=True)

    def lease(self, fid: str) -> DataUri:
        return self._at("leases", f"{fid}.json")

    def uploads_prefix(self, fid: str | None = None) -> DataUri:
        return self._at("uploads", *([fid] if fid else []), directory=True)

    def upload(self, fid: str, upload_id: str) -> DataUri:
        return self._at(
            "uploads", fid, f"{hashlib.sha256(upload_id.encode()).hexdigest()[:32]}.json"
        )

    def probe(self, token: str) -> DataUri:
        return self._at("probe", f"{token}.json")

    def shards_prefix(self, fid: str) -> DataUri:
        """Where a sharded file's shard outputs wait for the assembly (README "Shards")."""
        return self._at("shards", fid, directory=True)

    def shard_output(self, fid: str, name: str) -> DataUri:
        return self._at("shards", fid, f"{name}.out")


def dumps(document: Mapping[str, Any], *, compact: bool = False) -> bytes:
    """A state object's bytes: indented for people, or ``compact`` for ones that grow with
    the number of files. Secrets are out of free-text fields (``agent.redact``); a document
    holding none (the usual case, a listing of any size) is serialised once."""
    return dumps_scrubbed(document, 0 if compact else orjson.OPT_INDENT_2) + b"\n"


def loads(data: bytes, where: DataUri) -> dict[str, Any]:
    """A state object's JSON; ``StateError`` if it is not a JSON object of our format."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise StateError(f"{where} is not valid JSON ({error}); delete it to start over") from None
    if not isinstance(document, dict) or document.get("Format") != STATE_FORMAT:
        raise StateError(
            f"{where} was not written by this version of bt-agent (Format "
            f"{document.get('Format') if isinstance(document, dict) else '?'}, expected "
            f"{STATE_FORMAT}); use another Agent.StateUri or delete the state prefix"
        )
    return document


# ---------------------------------------------------------------------- job summary


async def read_summary(store: Store, layout: StateLayout) -> dict[str, Any] | None:
    found = await store.get_bytes(layout.summary.key)
    return None if found is None else loads(found[0], layout.summary)


async def read_summary_head(store: Store, layout: StateLayout) -> dict[str, Any] | None:
    """The stored summary without its per-file entries (run, status, counts), or ``None``.

    Raises ``StateError`` when the stored object is not a summary this agent can read.
    """
    found = await _stored_summary_head(store, layout, strict=True)
    return None if found is None else found[0]


async def _stored_summary_head(
    store: Store, layout: StateLayout, *, strict: bool
) -> tuple[dict[str, Any] | None, str] | None:
    """The stored summary's fields before its entries and its ETag; ``None``: no summary.

    A summary too large for ``get_bytes`` (a job of hundreds of thousands of files) is
    read from its first ``SUMMARY_HEAD_BYTES`` only: a compact summary puts the run, the
    status and the counts before its ``Files``. An object that is no readable summary
    gives ``None`` in place of the fields, or ``StateError`` when ``strict``.
    """
    where = layout.summary
    try:
        found = await store.get_bytes(where.key)
    except ObjectTooLargeError:
        info = await store.head(where.key)
        if info is None:
            return None
        data = bytearray()
        async with store.read(info, 0, min(info.size, SUMMARY_HEAD_BYTES)) as chunks:
            async for chunk in chunks:
                data += chunk
        head = _head_before_files(bytes(data))
        if head is None and strict:
            raise StateError(
                f"{where} is {info.size} bytes and its first {SUMMARY_HEAD_BYTES} do not "
                "hold a summary's run and status; delete it to start over"
            ) from None
        return head, info.etag
    if found is None:
        return None
    try:
        return summary_head_of(found[0], where), found[1]
    except StateError:
        if strict:
            raise
        return None, found[1]


_FILES_KEY = b',"Files":['
SUMMARY_HEAD_BYTES = 64 << 10  # where a large summary's run, status and counts are read


def _head_before_files(data: bytes) -> dict[str, Any] | None:
    """The fields of a compact summary before its ``Files``, or ``None`` if not so laid out."""
    at = data.find(_FILES_KEY)
    if at <= 0:
        return None
    try:
        head = orjson.loads(data[:at] + b"}")
    except orjson.JSONDecodeError:
        return None
    if isinstance(head, dict) and head.get("Format") == STATE_FORMAT and "RunId" in head:
        return head
    return None


def summary_head_of(data: bytes, where: DataUri) -> dict[str, Any]:
    """The fields a compact ``summary.json`` has before its ``Files`` (which come after
    the run, status and counts), parsed without the entries; the whole document when it
    is not laid out so (an indented one of an older agent, say)."""
    head = _head_before_files(data)
    return head if head is not None else loads(data, where)


async def write_summary(
    store: Store,
    layout: StateLayout,
    summary: Mapping[str, Any],
    pieces: Callable[[], Iterable[bytes]] | None = None,
) -> bool:
    """Store ``summary`` unless a final one for the same run is there; ``True`` if written.

    ``pieces`` gives its bytes a piece at a time (as ``dumps(summary, compact=True)`` would
    give them whole): they are uploaded as they come, in chunks of ``SUMMARY_CHUNK_BYTES``,
    so a summary of a million files is never held whole.

    Conditional on what was read, so two instances finishing at once write it once.
    """
    found = await _stored_summary_head(store, layout, strict=False)
    if found is not None and found[0] is not None:
        existing = found[0]
        final = existing.get("TransformJobStatus") in FINAL_STATUSES
        if existing.get("RunId") == summary["RunId"] and final:
            return False
    etag = None if found is None else found[1]
    del found
    fresh = etag is None
    try:
        if pieces is None:
            data = dumps(summary, compact=True)
            await store.put_bytes(layout.summary.key, data, if_none_match=fresh, if_match=etag)
            return True
        async with store.open_upload(layout.summary.key) as upload:
            chunk = bytearray()
            for piece in pieces():
                chunk += piece
                if len(chunk) >= SUMMARY_CHUNK_BYTES:
                    await upload.write(bytes(chunk))
                    chunk.clear()
            await upload.write(bytes(chunk))
            await upload.commit(if_none_match=fresh, if_match=etag)
    except PreconditionFailed:
        return False  # another instance wrote it meanwhile
    return True
