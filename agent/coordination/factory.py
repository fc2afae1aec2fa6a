"""``open_coordinator``: the run's listing, each file's output name, and the coordinator.

The one place that reads ``Agent.Coordination``: it checks the store for conditional
writes (Lease), joins or takes the run's listing snapshot, gives every file its output
name once (``name_outputs``), computes the static plan once (Static) and hands it on, and
returns the strategy's :class:`~agent.coordination.base.Coordinator`.
"""

from __future__ import annotations

import logging

from agent.coordination.base import Coordinator
from agent.coordination.identity import Identity
from agent.coordination.lease import LeaseSettings, check_conditional_writes
from agent.coordination.leased import LeaseCoordinator
from agent.coordination.listing import Listing, open_listing
from agent.coordination.plan import static_plan
from agent.coordination.shards import shard_files
from agent.coordination.state import StateLayout
from agent.coordination.static import StaticCoordinator
from agent.job import DataUri, JobSettings
from agent.storage import InputFile, ListingSource, Stores, list_inputs, name_outputs

log = logging.getLogger("agent.coordinate")


async def open_coordinator(
    stores: Stores,
    job: JobSettings,
    identity: Identity,
    *,
    lease_settings: LeaseSettings | None = None,
    force: bool = False,
) -> Coordinator:
    """Check the store (Lease mode), join or take the run's listing snapshot, and make the
    coordinator of the job's strategy.

    Raises ``ConditionalWritesUnsupported``, ``InputError`` (manifest) or
    ``StorageError``. An empty ``listing.files`` means no inputs (the job fails).
    """
    state = await stores.get(job.state_uri)
    layout = StateLayout(job.state_uri)
    lease_mode = job.agent.coordination == "Lease"
    if lease_mode:
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
    with_output_names(listing, output)
    sharding = shard_files(listing.files, job, layout)
    if lease_mode:
        settings = lease_settings or LeaseSettings()
        return LeaseCoordinator(
            stores,
            job,
            identity,
            state,
            listing,
            lease_settings=settings,
            force=force,
            sharding=sharding,
        )
    plan = static_plan(sharding.units, identity.count)
    return StaticCoordinator(
        stores, job, identity, state, listing, plan, force=force, sharding=sharding
    )


def with_output_names(listing: Listing, output: DataUri) -> None:
    """Give each file of ``listing`` its output name; an input whose output name is an
    earlier input's is marked to fail.

    The same on every instance (it depends on the listing and the output path only), so
    nothing of it is stored.
    """
    refused = name_outputs(listing.files, output)
    if refused:
        log.warning(
            "%d input(s) would write the output of an earlier input and fail instead, e.g. %s",
            len(refused),
            next(iter(refused.values())),
        )
