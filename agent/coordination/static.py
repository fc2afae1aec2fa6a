"""Static coordination: this instance does its share of the plan, minus what is completed.

The plan (``agent.coordination.plan``) is computed once over the run's listing snapshot and
handed in; every instance computes the same one. No other instance writes this
instance's outputs, so one listing of the output path at ``begin`` replaces a HEAD per
file, and the uploads its files left open are aborted at once. Completion records are
written in batches (``RECORDS_PER_BATCH`` files, or every ``RECORDS_FLUSH_SECONDS``) by a
background task that ``close`` cancels and awaits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator, Sequence

from agent.coordination.base import Coordinator
from agent.coordination.claim import Claim
from agent.coordination.commit import LeftoverUploads, abort_orphans
from agent.coordination.identity import Identity
from agent.coordination.listing import Listing
from agent.coordination.plan import StaticPlan
from agent.coordination.records import FileRecord, write_record, write_records
from agent.coordination.shards import Sharding
from agent.job import DataUri, JobSettings
from agent.storage import InputFile, StorageError, Store, Stores

log = logging.getLogger("agent.coordinate")

RECORDS_PER_BATCH = 200  # files per completion-record object, at most
RECORDS_FLUSH_SECONDS = 1.0  # and how long a finished file's record may wait to be written


class StaticCoordinator(Coordinator):
    """``Agent.Coordination: Static``: this instance's share of ``plan``."""

    def __init__(
        self,
        stores: Stores,
        job: JobSettings,
        identity: Identity,
        state: Store,
        listing: Listing,
        plan: StaticPlan,
        *,
        force: bool,
        sharding: Sharding | None = None,
    ) -> None:
        label = f" (instance {identity.index} of {identity.count})"
        super().__init__(
            stores, job, identity, state, listing, force=force, label=label, sharding=sharding
        )
        self.plan = plan
        # The output keys that existed when this instance began, from one listing, so a
        # fresh output costs no HEAD request (``None``: HEAD every output).
        self.existing_outputs: set[str] | None = None
        # Records not yet written, written as one object every RECORDS_PER_BATCH files or
        # RECORDS_FLUSH_SECONDS.
        self._pending: list[tuple[str, FileRecord]] = []  # (file id, record)
        self._batches = 0
        self._flushing = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None

    @property
    def planned(self) -> Sequence[InputFile]:
        return self.plan.share(self.identity.index).files

    async def _settle(self) -> None:
        files = self.sharding.units
        share = self.plan.share(self.identity.index)
        mine = {f.id for f in share.files}
        # Listing order (key order, or manifest order): outputs appear as a user expects.
        self.todo = [f for f in files if (fid := f.id) in mine and fid not in self.final]
        # A sharded file whose shards are all final but whose .out is not (its assembler
        # stopped): assembled by the instance that has its first shard.
        for fid, shards in self.sharding.shards.items():
            if fid not in self.final and shards[0].id in mine:
                if all(unit.id in self.final for unit in shards):
                    self.todo.append(self.sharding.files[fid])
        log.info(
            "%s: %d files, %d bytes planned (imbalance %.3f); %d already done",
            self.identity,
            len(share.files),
            share.bytes,
            self.plan.imbalance,
            len(share.files) - len(self.todo),
        )
        if self.todo:
            self._flusher = asyncio.create_task(self._flush_every(RECORDS_FLUSH_SECONDS))
            self.existing_outputs = await self._output_keys()
            aborted = await abort_orphans(self.stores, self.layout, [f.id for f in self.todo])
            leftovers = await LeftoverUploads.find(
                self.stores, self.job.output.uri, _outputs(self.todo)
            )
            aborted += await leftovers.abort()
            if aborted:
                log.info("aborted %d upload(s) left open by an earlier run", aborted)

    async def _output_keys(self) -> set[str]:
        """Every key under the output path now: one listing instead of a HEAD per file.

        Only for Static mode, where no other instance writes this instance's outputs; under
        leases another instance may commit any output at any time, so each claim HEADs it.
        """
        output = self.job.output.uri
        store = await self.stores.get(output)
        return {info.key for info in await store.list_objects(output.key)}

    def _must_head(self, output: DataUri) -> bool:
        return self.existing_outputs is None or output.key in self.existing_outputs

    async def _claims(self) -> AsyncIterator[Claim]:
        for item in self.todo:
            if item.id in self.sharding.files:
                claim = await self.assembly_claim(item, None)
            else:
                claim = await self._claim(item, None)
            if claim is not None:
                yield claim

    async def _keep(self, item: InputFile, record: FileRecord) -> None:
        if item.shard is not None or item.id in self.sharding.files:
            # Another instance looks for a shard's record to know when to assemble: at once.
            await write_record(self.state, self.layout, record)
            return
        # (No set of every file: Static mode never asks for one record again.)
        self._pending.append((item.id, record))
        # One flush at a time, and no file waits for one under way (it writes what comes
        # meanwhile too): files that finish faster than a batch is written never pile up
        # as waiting tasks.
        if len(self._pending) >= RECORDS_PER_BATCH and not self._flushing.locked():
            await self.flush_records()

    async def flush_records(self) -> None:
        """Write the records not yet written, as one batch object.

        A record lost with a crashed instance costs no work: its ``.out`` is committed with
        matching metadata, so the next run records it without computing it again.
        """
        async with self._flushing:
            while self._pending:  # records made while a batch is written: the next one
                batch = self._pending[:RECORDS_PER_BATCH]
                del self._pending[:RECORDS_PER_BATCH]
                self._batches += 1
                name = f"{self.holder.token}-{self._batches:06d}"
                try:
                    key, etag = await write_records(
                        self.state, self.layout, name, [record for _, record in batch]
                    )
                except BaseException:
                    self._pending[:0] = batch  # tried again at the next flush
                    raise
                self.records.remember(key, etag, batch)

    async def _flush_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await self.flush_records()
            except StorageError as error:
                log.warning("completion records not written yet: %s", error)

    async def _close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            # Awaited: a flush it had under way puts its batch back before the last one.
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        try:
            await asyncio.shield(self.flush_records())
        except StorageError as error:
            log.warning("completion records not written: %s", error)


def _outputs(files: list[InputFile]) -> Iterator[DataUri]:
    """The outputs of ``files`` (those whose output name is usable), one at a time."""
    return (item.output for item in files if item.output is not None)
