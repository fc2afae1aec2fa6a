"""Shards of one big file (README "Shards", docs/design.md §4.10): where a shard's records
begin, and the assembly of the file's ``.out`` from its shards' outputs.

A shard ``[s, e)`` takes the records that start in ``[b, e)``, where ``b`` is the first
record boundary at or after ``s`` (``find_start``; 0 for the first shard), and reads past
``e`` to finish the last of them (``agent.split.RecordWalk``). Its completion record keeps
``b`` (``FirstRecordAt``) and where its last record ended (``LastRecordEnd``). Only the
first shard's start is certain, so the assembly proves the chain before it joins
anything: each shard must begin where the one before it ended; one that does not is done
again from there, in the assembly, and the log says so.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson

from agent.coordination.claim import Claim
from agent.coordination.lease import ClaimLost
from agent.coordination.records import FileRecord
from agent.pipeline.failures import ErrorsFile, open_outputs
from agent.pipeline.outcomes import FileFailed
from agent.results import COMPLETED, FileResult
from agent.split import StartFinder
from agent.storage import InputFile, ObjectChangedError, ObjectInfo, Store, Stores

log = logging.getLogger("agent.run")

# How long a record may be where the start of a TFRecord shard is looked for, when
# MaxPayloadInMB sets no bound (a longer one is missed there and found by the proof).
UNBOUNDED_RECORD_BYTES = 64 << 20
START_WINDOW_BYTES = 1 << 20  # the first read looking for a shard's start


async def find_start(
    split_type: str, info: ObjectInfo, source: Store, at: int, max_record: int
) -> int:
    """The first record boundary at or after ``at`` (the object's size when none)."""
    finder = StartFinder(split_type, at, info.size, max_record or UNBOUNDED_RECORD_BYTES)
    if finder.boundary is not None:
        return finder.boundary
    # Read in windows that double from 1 MiB: the boundary is usually within a record of
    # ``at``, and one open-ended read would fetch (and read ahead) far more than that.
    begin, window = finder.read_from, START_WINDOW_BYTES
    while begin < info.size:
        end = min(info.size, begin + window)
        async with source.read(info, begin, end) as reader:
            async for chunk in reader:
                found = finder.feed(chunk)
                if found is not None:
                    return found
        begin, window = end, min(2 * window, UNBOUNDED_RECORD_BYTES)
    return finder.finish()


Redo = Callable[[Claim], Awaitable[FileRecord | None]]


class ShardAssembly:
    """One sharded file's ``.out`` (and errors file), from its shards' outputs in order."""

    def __init__(
        self, claim: Claim, result: FileResult, stores: Stores, redo: Redo, kms: str | None
    ) -> None:
        assert claim.shards is not None and claim.output is not None
        self.claim = claim
        self.item = claim.item
        self.shards = claim.shards
        self.output = claim.output
        self.result = result
        self.stores = stores
        self.redo = redo
        self.kms = kms

    def _which(self, unit: InputFile) -> str:
        shard = unit.shard
        assert shard is not None
        return f"shard {shard.index + 1} of {shard.count} [{shard.start}, {shard.end})"

    async def proven(self) -> list[FileRecord]:
        """The shards' records, each shard beginning where the one before it ended: one
        that does not is done again from there first. Raises ``FileFailed`` naming the
        first shard that failed from a proven start."""
        coordinator = self.claim.coordinator
        records = await coordinator.shard_records(self.item.id)
        chain: list[FileRecord] = []
        end = 0
        for unit, found in zip(self.shards, records, strict=True):
            record = found
            if record is None:
                raise FileFailed(f"{self.item.uri}: {self._which(unit)} is not done")
            if record.FirstRecordAt != end:
                log.warning(
                    "%s: %s began at byte %s, but the shard before it ended at byte %d: "
                    "done again from byte %d",
                    self.item.uri,
                    self._which(unit),
                    record.FirstRecordAt,
                    end,
                    end,
                )
                record = await self.redo(await coordinator.redo_claim(unit, end))
                if record is None:
                    raise FileFailed(f"{self.item.uri}: {self._which(unit)} was not recorded")
            if record.Status != COMPLETED:
                raise FileFailed(
                    f"{self.item.uri}: {self._which(unit)} failed: {record.FailureReason}"
                )
            assert record.LastRecordEnd is not None
            chain.append(record)
            end = record.LastRecordEnd
        size = self.item.info.size if self.item.info is not None else 0
        if end != size:
            raise FileFailed(
                f"{self.item.uri}: its last shard ended at byte {end}, not at the end of the "
                f"object ({size} bytes); run the job again"
            )
        return chain

    async def run(self) -> None:
        """Prove the chain, join the shards' outputs into the ``.out`` (server-side where
        the store can) and commit it under the claim's conditions."""
        chain = await self.proven()
        claim, result = self.claim, self.result
        sink = await self.stores.get(self.output)
        upload, errors = open_outputs(sink, claim, self.kms)
        async with upload, errors:
            base = 0
            for unit, record in zip(self.shards, chain, strict=True):
                assert unit.output is not None
                source = await self.stores.get(unit.output)
                info = await source.head(unit.output.key)
                if info is None or info.etag != record.OutputETag:
                    raise self._overtaken(unit)
                try:
                    await upload.append(source, info)
                except ObjectChangedError as error:
                    raise self._overtaken(unit) from error
                if record.FailedRecords:
                    await self._errors(unit, base, errors)
                base += record.Records
                result.requests += record.Requests
                result.failed_records += record.FailedRecords
            result.records = base
            result.input_bytes = self.item.info.size if self.item.info is not None else 0
            try:
                result.output_etag = await claim.commit(upload, errors.written())
            finally:
                if claim.committed:
                    result.output_etag = claim.output_etag
                    result.output_bytes = upload.bytes_written
                    result.errors_etag = claim.errors_etag

    def _overtaken(self, unit: InputFile) -> ClaimLost:
        """A shard object that is not the one its record names: only an instance that
        assembles the same file redoes a shard, so this assembly gives way to it (nothing
        is recorded; should nobody finish, the next run does)."""
        return ClaimLost(
            f"{self.item.uri}: the output of {self._which(unit)} ({unit.output}) was "
            "replaced meanwhile by another instance assembling the file"
        )

    async def _errors(self, unit: InputFile, base: int, errors: ErrorsFile) -> None:
        """A shard's failed records, their indexes made file-wide (offsets already are)."""
        assert unit.output is not None
        where = unit.output.key.removesuffix(".out") + ".errors.jsonl"
        source = await self.stores.get(unit.output)
        info = await source.head(where)
        if info is None:
            raise FileFailed(f"{self.item.uri}: the errors file of {self._which(unit)} is gone")
        pending = b""
        async with source.read(info) as reader:
            async for chunk in reader:
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    entry = orjson.loads(line)
                    entry["record"] += base
                    await errors.add_line(orjson.dumps(entry) + b"\n")
