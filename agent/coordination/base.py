"""Which files this instance does, and the bookkeeping around each one: the shared base.

The runner's side of coordination, for ``Static`` and ``Lease`` alike::

    async with await open_coordinator(stores, job, identity) as coordinator:
        ...start the model, resolve the execution parameters...
        await coordinator.begin(settings_hash(job))      # may raise SettingsMismatch (exit 2)
        async for claim in coordinator.files():
            async with claim:                            # releases lease, forgets UploadIds
                result = ...transform claim.item, racing claim.lost (claim.run does that),
                    uploading with metadata=claim.metadata, on_upload_id=claim.on_upload_id
                    and committing with ``await claim.commit(upload)``...
                await claim.record(result)               # the completion record
        await coordinator.finish(...)                    # the job summary, if final

``open_coordinator`` (``agent.coordination.factory``) joins or takes the run's listing,
gives each file its output name, and makes the :class:`Coordinator` of the job's
strategy: a ``StaticCoordinator`` (``agent.coordination.static``: this instance's share of
the plan minus what is completed) or a ``LeaseCoordinator`` (``agent.coordination.leased``:
each claim holds a lease, files are tried largest first). ``files()`` yields
:class:`~agent.coordination.claim.Claim` objects lazily: ask for the next one only when
there is room for it (a claim's lease is renewed from the moment it is won).

This base holds what both strategies share: the completion records read at ``begin``,
the claims held, a claim's commit rule and metadata, the record of a finished file, the
job summary at ``finish``, and the release of what the runner left open; and, for the
shards of big files, when a file's assembly is due and the claims for it and for a redo
(docs/design.md §4.10). That is why it is a little over 400 lines: each of those needs
the claim rule right above it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any, Self

from agent.coordination.claim import Claim, ErrorsTarget
from agent.coordination.commit import (
    CommitRule,
    OutputHead,
    UploadRecorder,
    commit_rule,
    head_output,
    matches,
    output_metadata,
)
from agent.coordination.identity import Identity
from agent.coordination.lease import HeldLease, Holder
from agent.coordination.listing import Listing
from agent.coordination.records import FileRecord, RecordCache, completed
from agent.coordination.shards import Sharding, shard_unit
from agent.coordination.state import StateLayout, now_iso, write_summary
from agent.coordination.summary import summary_head, summary_pieces
from agent.job import DataUri, JobSettings
from agent.results import COMPLETED, FileResult
from agent.storage import InputFile, StorageError, Store, Stores, errors_uri

log = logging.getLogger("agent.coordinate")


class Coordinator(ABC):
    """This instance's view of the job's files, state and summary; see the module docstring."""

    def __init__(
        self,
        stores: Stores,
        job: JobSettings,
        identity: Identity,
        state: Store,
        listing: Listing,
        *,
        force: bool,
        label: str = "",
        sharding: Sharding | None = None,
    ) -> None:
        self.stores = stores
        self.job = job
        self.identity = identity
        self.state = state
        self.layout = StateLayout(job.state_uri)
        self.listing = listing
        self.force = force
        self.holder = Holder.new(f"{socket.gethostname()}:{os.getpid()}{label}")
        self.records = RecordCache(state, self.layout)
        self.settings_hash: str | None = None
        self.final: set[str] = set()  # file ids settled in this run
        self.todo: list[InputFile] = []  # this instance's files, in order, after ``begin``
        self.held: dict[str, Claim] = {}  # claims yielded and not yet closed
        self._last_finished = ""
        # The units of work: whole files and the shards of big ones (README "Shards").
        self.sharding = sharding if sharding is not None else Sharding(tuple(listing.files))
        self.assembling: set[str] = set()  # sharded files this instance is assembling
        self._looking = asyncio.Lock()  # after_shard: one look at the shards at a time

    @property
    @abstractmethod
    def planned(self) -> Sequence[InputFile]:
        """The files this instance would do before anything is known to be completed."""

    async def begin(self, settings_hash: str) -> None:
        """Read the completion records and settle this instance's files.

        Raises ``SettingsMismatch`` (exit 2) when files were completed with other settings
        and ``force`` is off. Static mode also aborts the uploads its files left open.
        """
        self.settings_hash = settings_hash
        records = await self.records.refresh()
        files = [*self.sharding.units, *self.sharding.files.values()]
        done = completed(records, files, settings_hash, force=self.force)
        self.final = done | {
            fid
            for item in files
            if (record := records.get(fid := item.id)) is not None
            and record.final_for(item, settings_hash, self.listing.run_id)
        }
        self._settle_shards()
        await self._settle()

    def _settle_shards(self) -> None:
        """The shards of a final file are final too (their records go once it is)."""
        for fid, shards in self.sharding.shards.items():
            if fid in self.final:
                self.final.update(unit.id for unit in shards)

    @abstractmethod
    async def _settle(self) -> None:
        """Choose ``todo`` from the listing minus ``final``; clean up what is left open."""

    async def files(self) -> AsyncIterator[Claim]:
        """The claims this instance should work on, one at a time as asked for."""
        if self.settings_hash is None:
            raise RuntimeError("call begin(settings_hash) before files()")
        async for claim in self._claims():
            yield claim

    @abstractmethod
    def _claims(self) -> AsyncIterator[Claim]:
        """The strategy's claims (``begin`` has run)."""

    def _must_head(self, output: DataUri) -> bool:
        """Whether ``output`` may exist already, so its claim must look it up (HEAD)."""
        return True

    async def _claim(self, item: InputFile, lease: HeldLease | None) -> Claim | None:
        """The claim of ``item`` (held), or ``None`` when its output is already committed
        with the right metadata (its record is then written here)."""
        assert self.settings_hash is not None
        output = item.output  # None: the name is refused (the pipeline fails the file)
        metadata: dict[str, str] = {}
        rule = CommitRule(if_none_match=True)
        isolating = self.job.agent.max_failed_records is not None
        errors_head: OutputHead | None = None
        if item.info is not None and output is not None and item.problem is None:
            metadata = output_metadata(
                item.info.etag, self.settings_hash, self.job.transform_job_name
            )
            head = None
            store = await self.stores.get(output)
            # A shard's output lies under the state prefix, which the Static listing of
            # the output path may not cover: always looked up.
            sharded = item.shard is not None
            if sharded or self._must_head(output):
                head = await head_output(store, output.key)
            where = errors_uri(output)
            if isolating and (sharded or self._must_head(where)):
                errors_head = await head_output(store, where.key)
            found = commit_rule(head, metadata)
            if found is None and item.shard is not None:
                # A shard committed but never recorded: its proof (where its records
                # began and ended) is in the record alone, so it is done again.
                assert head is not None
                found = CommitRule(if_match=head.etag)
            if found is None:
                # Committed, but its record never written (the instance died in between).
                assert head is not None
                log.info("%s: its output is already committed; recording it", item.uri)
                result = FileResult(str(item.uri), str(output), item.info.size, COMPLETED)
                result.output_etag, result.output_bytes = head.etag, head.size
                assembled = item.id in self.sharding.shards
                if assembled:
                    records = await self.shard_records(item.id)
                    result.records = sum(r.Records for r in records if r is not None)
                    result.requests = sum(r.Requests for r in records if r is not None)
                if errors_head is not None and matches(errors_head, metadata):
                    # Committed before the output, with the same input and settings.
                    result.errors_etag = errors_head.etag
                    result.failed_records = await _count_lines(store, errors_uri(output).key)
                await self.record(item, result, counts_unknown=not assembled)
                if assembled:
                    await self.shards_assembled(item.id)
                return None
            rule = found
        recorder = UploadRecorder(
            self.state, self.layout, item.id, output or item.uri, self.holder.token
        )
        errors: ErrorsTarget | None = None
        if isolating and output is not None:
            where = errors_uri(output)
            errors = ErrorsTarget(
                where,
                await self.stores.get(where),
                CommitRule(if_none_match=True)
                if errors_head is None
                else CommitRule(if_match=errors_head.etag),
                replace(recorder, output=where, written=recorder.written),
                errors_head,
            )
        claim = Claim(item, output, metadata, rule, lease, recorder, self, errors)
        claim.shards = self.sharding.shards.get(item.id) if item.shard is None else None
        self.held[item.id] = claim
        return claim

    def released(self, fid: str) -> None:
        """A claim closed (``RecordWriter``): the file is no longer held."""
        self.held.pop(fid, None)
        self.assembling.discard(fid)

    async def record(
        self, item: InputFile, result: FileResult, *, counts_unknown: bool = False
    ) -> FileRecord:
        """Write ``item``'s completion record from ``result`` (after its commit); return it.

        ``counts_unknown``: the output was committed by an instance that died before its
        record, and ``result`` holds none of that work's counts."""
        assert self.settings_hash is not None
        uri = str(item.uri)
        record = FileRecord(
            Input=result.input_uri if result.input_uri == uri else uri,  # one copy is kept
            InputETag=None if item.info is None else item.info.etag,
            SettingsHash=self.settings_hash,
            Status=result.status,
            RunId=self.listing.run_id,
            Instance=self.holder.label,
            Output=result.output_uri,
            OutputETag=result.output_etag,
            Records=result.records,
            Requests=result.requests,
            InputBytes=result.input_bytes,
            OutputBytes=result.output_bytes,
            Seconds=round(result.seconds, 3),
            FailureReason=result.error,
            FailedRecords=result.failed_records,
            ErrorsETag=result.errors_etag,
            FinishedAt=self._finished_at(),
            Shard=None if item.shard is None else item.shard.name,
            FirstRecordAt=result.first_record_at,
            LastRecordEnd=result.last_record_end,
            Shards=len(self.sharding.shards.get(item.id, ())) if item.shard is None else 0,
            CountsUnknown=counts_unknown,
        )
        await self._keep(item, record)
        return record

    # ------------------------------------------------------------------ shards

    async def shard_records(self, fid: str) -> list[FileRecord | None]:
        """The final records of the shards of the file ``fid``, fresh, in file order
        (``None`` for a shard without one)."""
        assert self.settings_hash is not None
        records = await self.records.refresh()
        found: list[FileRecord | None] = []
        for unit in self.sharding.shards.get(fid, ()):
            record = records.get(unit.id)
            final = record is not None and record.final_for(
                unit, self.settings_hash, self.listing.run_id
            )
            found.append(record if final else None)
        return found

    async def after_shard(self, unit: InputFile) -> Claim | None:
        """After a shard's record: the claim to assemble its file when every shard of it is
        now final and its ``.out`` is not (the instance that settles the last shard
        assembles; two that settle the last two at once both may, and the conditional
        commit keeps one ``.out``). ``None`` otherwise.

        One look at a time: two shards of this instance settling together must not both
        look before either's record is written, nor skip because the other is looking.
        """
        fid = unit.file
        item = self.sharding.files.get(fid)
        if item is None:
            return None
        async with self._looking:
            if fid in self.assembling or fid in self.held:
                return None
            if any(record is None for record in await self.shard_records(fid)):
                return None
            assert self.settings_hash is not None
            mine = self.records.records.get(fid)
            if mine is not None and mine.final_for(item, self.settings_hash, self.listing.run_id):
                return None
            return await self.assembly_claim(item, None)

    async def assembly_claim(self, item: InputFile, lease: HeldLease | None) -> Claim | None:
        """The claim of a sharded file's assembly (``None`` if its ``.out`` was committed
        already: then recorded here)."""
        self.assembling.add(item.id)
        claim = None
        try:
            claim = await self._claim(item, lease)
            return claim
        finally:
            if claim is None:
                self.assembling.discard(item.id)

    async def redo_claim(self, unit: InputFile, begin: int) -> Claim:
        """A claim to do ``unit`` (a shard) again from ``begin``, where the shard before it
        was proven to end, inside its file's assembly (README "Shards")."""
        assert unit.shard is not None
        again = shard_unit(unit, replace(unit.shard, begin=begin), unit.output)
        claim = await self._claim(again, None)
        assert claim is not None  # a shard's output is never recorded without its proof
        claim.in_assembly = True
        return claim

    async def file_record(self, fid: str) -> FileRecord | None:
        """The file's own record, fresh from the store (``RecordWriter``)."""
        return await self.records.get(fid)

    async def shards_assembled(self, fid: str) -> None:
        """After a sharded file's record: delete its shard objects and shard records
        (best effort: they are never read again once the file is final)."""
        prefix = self.layout.shards_prefix(fid)
        try:
            store = await self.stores.get(prefix)
            for info in await store.list_objects(prefix.key):
                await store.delete(info.key)
            for unit in self.sharding.shards.get(fid, ()):
                await self.state.delete(self.layout.done(unit.id).key)
        except StorageError as error:
            log.warning("the shard objects under %s were not all deleted: %s", prefix, error)

    @abstractmethod
    async def _keep(self, item: InputFile, record: FileRecord) -> None:
        """Store ``record``, now or in a batch."""

    def _finished_at(self) -> str:
        """``now_iso()``, the same string object for files finished in the same millisecond
        (many, in a run of small or missing files: each record keeps its time to the end)."""
        now = now_iso()
        if now != self._last_finished:
            self._last_finished = now
        return self._last_finished

    @abstractmethod
    async def flush_records(self) -> None:
        """Write the records not yet written (a strategy that batches them has some)."""

    async def finish(
        self,
        *,
        stopped: str | None = None,
        execution_parameters: Mapping[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """Write the job summary if every file now has a final record; return it if written
        (without its per-file entries: ``"Files"`` is ``None``).

        Records still pending are written first.

        ``stopped`` (the reason, on SIGTERM/SIGINT) writes a ``Stopped`` summary instead
        when the job is not final and no other instance holds a lease.
        """
        await self.flush_records()
        records = await self.records.refresh()
        # The stored snapshot is this run's while its ETag is the one read or written at
        # the start (one HEAD, not a second copy of a listing of any size in memory).
        listing = self.listing
        stored = await self.state.head(self.layout.listing.key)
        if stored is not None and listing.etag is not None and stored.etag != listing.etag:
            log.warning(
                "the run %s was replaced by another listing snapshot (a start that listed "
                "another source with the same state prefix); this summary covers it alone",
                listing.run_id,
            )
        summary, final = summary_head(
            self.job.transform_job_name,
            listing,
            records,
            self.settings_hash,
            stopped=stopped,
            execution_parameters=execution_parameters,
        )
        if not final and (stopped is None or not await self._alone()):
            return None
        if final:
            await self._tidy()
        written = await write_summary(
            self.state,
            self.layout,
            summary,
            lambda: summary_pieces(summary, listing, records, self.settings_hash),
        )
        return summary if written else None

    async def _alone(self) -> bool:
        """Whether no other instance may still be working on this run's files."""
        return True

    async def _tidy(self) -> None:
        """Every file is final: remove what coordinating them may have left (§4.4)."""
        return  # Static mode leaves nothing: its plan is fixed, it holds no lease

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Release every claim the runner did not close (a stop mid-way); write records."""
        for claim in list(self.held.values()):
            await asyncio.shield(claim.close())
        await self._close()

    @abstractmethod
    async def _close(self) -> None:
        """End what the strategy started (a background task: cancelled and awaited)."""


async def _count_lines(store: Store, key: str) -> int:
    """The lines of a committed errors file (one failed record each), read as a stream."""
    info = await store.head(key)
    if info is None:
        return 0
    count = 0
    async with store.read(info) as reader:
        async for chunk in reader:
            count += chunk.count(b"\n")
    return count
