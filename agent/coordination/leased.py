"""Lease coordination: each file is claimed under a lease, largest first (see
``agent.coordination.lease`` and the README).

Any instance may do any file, so nothing is planned: each claim holds a lease renewed from
the moment it is won, its previous holder's uploads are aborted when it is claimed, and
each completion record is written at once (another instance may look for it any time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence

from agent.coordination.base import Coordinator
from agent.coordination.claim import Claim
from agent.coordination.commit import LeftoverUploads, abort_orphans
from agent.coordination.identity import Identity
from agent.coordination.lease import HeldLease, LeaseBook, LeaseSettings
from agent.coordination.listing import Listing
from agent.coordination.plan import largest_first
from agent.coordination.records import FileRecord, write_record
from agent.coordination.shards import Sharding
from agent.job import JobSettings
from agent.storage import InputFile, StorageError, Store, Stores

log = logging.getLogger("agent.coordinate")


class LeaseCoordinator(Coordinator):
    """``Agent.Coordination: Lease``: files claimed one lease at a time."""

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
        sharding: Sharding | None = None,
    ) -> None:
        super().__init__(stores, job, identity, state, listing, force=force, sharding=sharding)
        self.lease_settings = lease_settings
        # Uploads of this instance's outputs open when it began, aborted as each file is
        # claimed.
        self.leftovers: LeftoverUploads | None = None

    @property
    def planned(self) -> Sequence[InputFile]:
        return self.sharding.units

    async def _settle(self) -> None:
        files = self.sharding.units
        # Units largest first, then the sharded files: each one's assembly may be claimed
        # once all its shards are final (README "Shards").
        units = [*largest_first(files), *self.sharding.files.values()]
        self.todo = [f for f in units if f.id not in self.final]
        log.info("%d of %d files to do, claimed by lease", len(self.todo), len(units))
        outputs = (item.output for item in self.todo if item.output is not None)
        self.leftovers = await LeftoverUploads.find(self.stores, self.job.output.uri, outputs)

    async def _claims(self) -> AsyncIterator[Claim]:
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
                if not self._ready(item):
                    continue
                lease = await book.try_acquire(fid, _label(item))
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

    def _ready(self, item: InputFile) -> bool:
        """Whether ``item`` may be claimed now: a sharded file's assembly only once every
        shard of it is final."""
        shards = self.sharding.shards.get(item.id) if item.shard is None else None
        return not shards or all(unit.id in self.final for unit in shards)

    async def _refresh_final(self) -> None:
        records = await self.records.refresh()
        for item in self.todo:
            record = records.get(fid := item.id)
            if record is not None and record.final_for(
                item, self.settings_hash, self.listing.run_id
            ):
                self.final.add(fid)
        self._settle_shards()

    async def after_shard(self, unit: InputFile) -> Claim | None:
        return None  # the claim loop takes the assembly, under the file's lease

    async def _prepare(self, item: InputFile, lease: HeldLease) -> Claim | None:
        """A claim for ``item`` under ``lease``, or ``None`` when it turns out to be settled
        already (the lease is then released)."""
        fid = item.id
        assert self.settings_hash is not None
        record = await self.records.get(fid)
        if record is not None and record.final_for(item, self.settings_hash, self.listing.run_id):
            self.final.add(fid)  # finished by another instance just before our claim
            await lease.release()
            return None
        # A shard of a file another instance assembled meanwhile (its shard records and
        # objects gone): redoing it would leave them behind for good (found by the soak).
        parent = self.sharding.files.get(item.file) if item.shard is not None else None
        if parent is not None:
            whole = await self.records.get(parent.id)
            run = self.listing.run_id
            if whole is not None and whole.final_for(parent, self.settings_hash, run):
                self.final.add(parent.id)
                self._settle_shards()
                await lease.release()
                return None
        await lease.__aenter__()  # renew from now on, whatever the runner does next
        try:
            claim = await self._take_over(item, lease)
        except BaseException:
            await asyncio.shield(lease.release())
            raise
        if claim is None:
            await lease.release()
        return claim

    async def _take_over(self, item: InputFile, lease: HeldLease) -> Claim | None:
        """Abort what earlier holders left open of ``item``, then claim it."""
        taken = await abort_orphans(
            self.stores, self.layout, [item.id], keep_holder=self.holder.token
        )
        if taken:
            log.info("%s: aborted %d upload(s) of its previous holder", item.uri, taken)
        if self.leftovers is not None and item.output is not None:
            if taken := await self.leftovers.abort([item.output]):
                log.info("%s: aborted %d upload(s) open since an earlier run", item.uri, taken)
        if item.id in self.sharding.files:
            return await self.assembly_claim(item, lease)
        return await self._claim(item, lease)

    async def _keep(self, item: InputFile, record: FileRecord) -> None:
        # Another instance may look for this one record at any time: written at once.
        self.final.add(item.id)
        await write_record(self.state, self.layout, record)

    async def flush_records(self) -> None:
        return  # each record is written at once: none waits

    async def _close(self) -> None:
        return  # no background task: each lease stops its own renewal when released

    async def _alone(self) -> bool:
        return not await self.state.list_objects(self.layout.leases_prefix.key)

    async def _tidy(self) -> None:
        """Delete the leases left when every file is final. A holder killed (or paused past
        its TTL) between taking a lease and finding its file already final leaves one
        that nobody would ever take over or delete (found by the soak). No lease guards
        anything once all is final; a holder still alive finds its lease gone and stops."""
        for info in await self.state.list_objects(self.layout.leases_prefix.key):
            with contextlib.suppress(StorageError):
                await self.state.delete(info.key)


def _label(item: InputFile) -> str:
    """What a lease says it is for: the input, and a shard's range (``bt-agent status``)."""
    shard = item.shard
    return str(item.uri) if shard is None else f"{item.uri} [{shard.start}, {shard.end})"
