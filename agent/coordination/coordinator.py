"""Which files this instance does, and the bookkeeping around each one (docs/design.md §4).

The runner's side of coordination, for ``Static`` and ``Lease`` alike::

    async with await Coordinator.open(stores, job, identity) as coordinator:
        ...start the model, resolve the execution parameters...
        await coordinator.begin(settings_hash(job))      # may raise SettingsMismatch (exit 2)
        async for claim in coordinator.files():
            async with claim:                            # releases lease, forgets UploadIds
                result = ...transform claim.item, racing claim.lost (claim.run does that),
                    uploading with metadata=claim.metadata, on_upload_id=claim.on_upload_id
                    and committing with ``await claim.commit(upload)``...
                await claim.record(result)               # the completion record
        await coordinator.finish(...)                    # the job summary, if final

``files()`` yields :class:`~agent.coordination.claim.Claim` objects lazily: ask for the next
one only when there is room for it (a claim's lease is renewed from the moment it is
won). In
Static mode the claims are this instance's share of the plan minus what is completed;
in Lease mode each claim holds a lease and files are tried largest first (see
``agent.coordination.lease`` and the README).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import replace
from types import TracebackType
from typing import Any, Self

from agent.coordination.claim import Claim
from agent.coordination.commit import (
    CommitRule,
    LeftoverUploads,
    UploadRecorder,
    abort_orphans,
    commit_rule,
    head_output,
    output_metadata,
)
from agent.coordination.lease import (
    HeldLease,
    Holder,
    LeaseBook,
    LeaseSettings,
    check_conditional_writes,
)
from agent.coordination.plan import Identity, largest_first, static_plan
from agent.coordination.records import (
    FileRecord,
    RecordCache,
    completed,
    summary_head,
    summary_pieces,
    write_record,
    write_records,
)
from agent.coordination.state import (
    Listing,
    StateLayout,
    now_iso,
    open_listing,
    write_summary,
)
from agent.job.types import DataUri, JobSettings
from agent.results import COMPLETED, FileResult
from agent.storage import Stores, list_inputs
from agent.storage.base import StorageError, Store
from agent.storage.inputs import (
    InputFile,
    ListingSource,
    OutputKeyError,
    output_collisions,
    output_uri,
)

log = logging.getLogger("agent.coordinate")

RECORDS_PER_BATCH = 200  # Static mode: files per completion-record object, at most
RECORDS_FLUSH_SECONDS = 1.0  # and how long a finished file's record may wait to be written


class Coordinator:
    """This instance's view of the job's files, state and summary; see the module docstring."""

    def __init__(
        self,
        stores: Stores,
        job: JobSettings,
        identity: Identity,
        state: Store,
        listing: Listing,
        *,
        lease_settings: LeaseSettings,
        force: bool,
    ) -> None:
        self.stores = stores
        self.job = job
        self.identity = identity
        self.state = state
        self.layout = StateLayout(job.state_uri)
        self.listing = listing
        self.lease_settings = lease_settings
        self.force = force
        self.lease_mode = job.agent.coordination == "Lease"
        label = f"{socket.gethostname()}:{os.getpid()}"
        if not self.lease_mode:
            label += f" (instance {identity.index} of {identity.count})"
        self.holder = Holder.new(label)
        self.records = RecordCache(state, self.layout)
        self.settings_hash: str | None = None
        self.final: set[str] = set()  # file ids settled in this run
        self.todo: list[InputFile] = []  # this instance's files, in order, after ``begin``
        self.held: dict[str, Claim] = {}  # claims yielded and not yet closed
        # Static mode: the output keys that existed when this instance began, from one
        # listing, so a fresh output costs no HEAD request (``None``: HEAD every output).
        self.existing_outputs: set[str] | None = None
        # Static mode: records not yet written, written as one object every
        # RECORDS_PER_BATCH files or RECORDS_FLUSH_SECONDS.
        self._pending: list[tuple[str, FileRecord]] = []  # (file id, record)
        self._last_finished = ""
        self._batches = 0
        self._flushing = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None
        # Lease mode: uploads of this instance's outputs open when it began, aborted as
        # each file is claimed (Static mode aborts its share's at once, in ``begin``).
        self.leftovers: LeftoverUploads | None = None

    @classmethod
    async def open(
        cls,
        stores: Stores,
        job: JobSettings,
        identity: Identity,
        *,
        lease_settings: LeaseSettings | None = None,
        force: bool = False,
    ) -> Coordinator:
        """Check the store (Lease mode) and join or take the run's listing snapshot.

        Raises ``ConditionalWritesUnsupported``, ``InputError`` (manifest) or
        ``StorageError``. An empty ``listing.files`` means no inputs (the job fails).
        """
        state = await stores.get(job.state_uri)
        layout = StateLayout(job.state_uri)
        if job.agent.coordination == "Lease":
            await check_conditional_writes(state, layout)

        output = job.output.uri
        source = await ListingSource.of(
            stores, job.input.data_type, job.input.uri, output, job.state_uri
        )

        async def inputs() -> list[InputFile]:
            return await list_inputs(
                stores,
                job.input.data_type,
                job.input.uri,
                exclude=(output, job.state_uri),
                manifest_etag=source.manifest_etag,
            )

        listing, created = await open_listing(state, layout, job.transform_job_name, inputs, source)
        if not listing.files:
            log.info("the listing found no inputs: no run was taken, nothing was stored")
        else:
            how = "took" if created else "joined"
            log.info("%s the run %s: %d files", how, listing.run_id, len(listing.files))
        listing = with_collisions(listing, output)
        settings = lease_settings or LeaseSettings()
        return cls(stores, job, identity, state, listing, lease_settings=settings, force=force)

    async def begin(self, settings_hash: str) -> None:
        """Read the completion records and settle this instance's files.

        Raises ``SettingsMismatch`` (exit 2) when files were completed with other settings
        and ``force`` is off. Static mode also aborts the uploads its files left open.
        """
        self.settings_hash = settings_hash
        records = await self.records.refresh()
        files = self.listing.files
        done = completed(records, files, settings_hash, force=self.force)
        self.final = done | {
            fid
            for item in files
            if (record := records.get(fid := item.id)) is not None
            and record.final_for(item, settings_hash, self.listing.run_id)
        }
        if self.lease_mode:
            self.todo = [f for f in largest_first(files) if f.id not in self.final]
            log.info("%d of %d files to do, claimed by lease", len(self.todo), len(files))
            self.leftovers = await LeftoverUploads.find(
                self.stores, self.job.output.uri, self._outputs(self.todo)
            )
            return
        plan = static_plan(files, self.identity.count)
        share = plan.share(self.identity.index)
        mine = {f.id for f in share.files}
        # Listing order (key order, or manifest order): outputs appear as a user expects.
        self.todo = [f for f in files if (fid := f.id) in mine and fid not in self.final]
        log.info(
            "%s: %d files, %d bytes planned (imbalance %.3f); %d already done",
            self.identity,
            len(share.files),
            share.bytes,
            plan.imbalance,
            len(share.files) - len(self.todo),
        )
        if self.todo:
            self._flusher = asyncio.create_task(self._flush_every(RECORDS_FLUSH_SECONDS))
            self.existing_outputs = await self._output_keys()
            aborted = await abort_orphans(self.stores, self.layout, [f.id for f in self.todo])
            leftovers = await LeftoverUploads.find(
                self.stores, self.job.output.uri, self._outputs(self.todo)
            )
            aborted += await leftovers.abort()
            if aborted:
                log.info("aborted %d upload(s) left open by an earlier run", aborted)

    def _outputs(self, files: list[InputFile]) -> Iterator[DataUri]:
        """The outputs of ``files`` (those whose output name is usable), one at a time."""
        for item in files:
            try:
                yield output_uri(item.relative_key, self.job.output.uri)
            except OutputKeyError:
                continue

    async def _output_keys(self) -> set[str]:
        """Every key under the output path now: one listing instead of a HEAD per file.

        Only for Static mode, where no other instance writes this instance's outputs; under
        leases another instance may commit any output at any time, so each claim HEADs it.
        """
        output = self.job.output.uri
        store = await self.stores.get(output)
        return {info.key for info in await store.list_objects(output.key)}

    async def files(self) -> AsyncIterator[Claim]:
        """The claims this instance should work on, one at a time as asked for."""
        if self.settings_hash is None:
            raise RuntimeError("call begin(settings_hash) before files()")
        if not self.lease_mode:
            for item in self.todo:
                claim = await self._prepare(item, None)
                if claim is not None:
                    yield claim
            return
        async for claim in self._lease_claims():
            yield claim

    async def _lease_claims(self) -> AsyncIterator[Claim]:
        """Claim loop: one pass over the files (largest first) per round, from a cursor.

        Each instance starts at its index, so instances started together rarely race for
        the same lease. Foreign leases are looked at again every ``poll_seconds`` (sooner
        if a takeover falls due); the loop ends when every file is settled and no claim
        of this instance is still open (a claim lost mid-way puts its file back in play).
        """
        book = LeaseBook(self.state, self.layout, self.holder, self.lease_settings)
        poll = self.lease_settings.poll_seconds
        order = self.todo
        next_look: dict[str, float] = {}  # file id -> when to look at its lease again
        cursor = self.identity.index % len(order) if order and self.identity.count > 1 else 0
        while order:
            claim = None
            for _ in range(len(order)):
                item = order[cursor]
                cursor = (cursor + 1) % len(order)
                fid = item.id
                now = time.monotonic()
                if fid in self.final or fid in self.held or next_look.get(fid, 0.0) > now:
                    continue
                lease = await book.try_acquire(fid, str(item.uri))
                if lease is None:
                    due = book.takeover_due(fid)
                    next_look[fid] = now + poll if due is None else min(now + poll, due)
                    continue
                next_look.pop(fid, None)
                if (claim := await self._prepare(item, lease)) is not None:
                    break
            if claim is not None:
                yield claim
                continue
            await self._refresh_final()
            open_files = [
                fid for item in order if (fid := item.id) not in self.final and fid not in self.held
            ]
            if not open_files and not self.held:
                return
            # Sleep until a watched lease is due a look, at most one poll interval.
            looks = [next_look[f] for f in open_files if f in next_look]
            wake = min(looks, default=time.monotonic() + poll)
            await asyncio.sleep(min(poll, max(0.05, wake - time.monotonic())))

    async def _refresh_final(self) -> None:
        records = await self.records.refresh()
        for item in self.todo:
            record = records.get(fid := item.id)
            if record is not None and record.final_for(
                item, self.settings_hash, self.listing.run_id
            ):
                self.final.add(fid)

    async def _prepare(self, item: InputFile, lease: HeldLease | None) -> Claim | None:
        """A claim for ``item``, or ``None`` when it turns out to be settled already."""
        fid = item.id
        assert self.settings_hash is not None
        if lease is not None:
            record = await self.records.get(fid)
            if record is not None and record.final_for(
                item, self.settings_hash, self.listing.run_id
            ):
                self.final.add(fid)  # finished by another instance just before our claim
                await lease.release()
                return None
            await lease.__aenter__()  # renew from now on, whatever the runner does next
        try:
            claim = await self._claim(item, lease)
        except BaseException:
            if lease is not None:
                await asyncio.shield(lease.release())
            raise
        if claim is None:
            if lease is not None:
                await lease.release()
            return None
        self.held[fid] = claim
        return claim

    async def _claim(self, item: InputFile, lease: HeldLease | None) -> Claim | None:
        fid = item.id
        assert self.settings_hash is not None
        if lease is not None:
            taken = await abort_orphans(
                self.stores, self.layout, [fid], keep_holder=self.holder.token
            )
            if taken:
                log.info("%s: aborted %d upload(s) of its previous holder", item.uri, taken)
        try:
            output: DataUri | None = output_uri(item.relative_key, self.job.output.uri)
        except OutputKeyError:
            output = None  # the pipeline fails the file with the reason
        if self.leftovers is not None and output is not None:
            if taken := await self.leftovers.abort([output]):
                log.info("%s: aborted %d upload(s) open since an earlier run", item.uri, taken)
        metadata: dict[str, str] = {}
        rule = CommitRule(if_none_match=True)
        if item.info is not None and output is not None and item.problem is None:
            metadata = output_metadata(
                item.info.etag, self.settings_hash, self.job.transform_job_name
            )
            head = None
            if self.existing_outputs is None or output.key in self.existing_outputs:
                head = await head_output(await self.stores.get(output), output.key)
            found = commit_rule(head, metadata)
            if found is None:
                # Committed, but its record never written (the instance died in between).
                assert head is not None
                log.info("%s: its output is already committed; recording it", item.uri)
                result = FileResult(str(item.uri), str(output), item.info.size, COMPLETED)
                result.output_etag, result.output_bytes = head.etag, head.size
                await self.record(item, result)
                return None
            rule = found
        recorder = UploadRecorder(
            self.state, self.layout, fid, output or item.uri, self.holder.token
        )
        return Claim(
            item,
            output,
            metadata,
            rule,
            lease,
            recorder,
            on_record=self.record,
            on_close=self._closed,
        )

    def _closed(self, fid: str) -> None:
        self.held.pop(fid, None)

    async def record(self, item: InputFile, result: FileResult) -> FileRecord:
        """Write ``item``'s completion record from ``result`` (after its commit); return it."""
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
            FinishedAt=self._finished_at(),
        )
        if self.lease_mode:  # another instance may look for this one record at any time
            self.final.add(item.id)  # (Static mode never asks again: no set of every file)
            await write_record(self.state, self.layout, record)
            return record
        self._pending.append((item.id, record))
        # One flush at a time, and no file waits for one under way (it writes what comes
        # meanwhile too): files that finish faster than a batch is written never pile up
        # as waiting tasks.
        if len(self._pending) >= RECORDS_PER_BATCH and not self._flushing.locked():
            await self.flush_records()
        return record

    def _finished_at(self) -> str:
        """``now_iso()``, the same string object for files finished in the same millisecond
        (many, in a run of small or missing files: each record keeps its time to the end)."""
        now = now_iso()
        if now != self._last_finished:
            self._last_finished = now
        return self._last_finished

    async def flush_records(self) -> None:
        """Write the records not yet written, as one batch object (Static mode).

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
        written = await write_summary(
            self.state,
            self.layout,
            summary,
            lambda: summary_pieces(summary, listing, records, self.settings_hash),
        )
        return summary if written else None

    async def _alone(self) -> bool:
        if not self.lease_mode:
            return True
        return not await self.state.list_objects(self.layout.leases_prefix.key)

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
        if self._flusher is not None:
            self._flusher.cancel()
        try:
            await asyncio.shield(self.flush_records())
        except StorageError as error:
            log.warning("completion records not written: %s", error)


def with_collisions(listing: Listing, output: DataUri) -> Listing:
    """``listing`` with each input whose output name is an earlier input's marked to fail.

    The same on every instance (it depends on the listing and the output path only), so
    nothing of it is stored.
    """
    refused = output_collisions(listing.files, output)
    if not refused:
        return listing
    log.warning(
        "%d input(s) would write the output of an earlier input and fail instead, e.g. %s",
        len(refused),
        next(iter(refused.values())),
    )
    files = tuple(
        replace(item, problem=refused[item.id]) if item.id in refused else item
        for item in listing.files
    )
    return replace(listing, files=files)
