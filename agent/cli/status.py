"""``bt-agent status`` and ``bt-agent plan``: what the state prefix says, for people.

``status`` prints the stored job summary (JSON, as DescribeTransformJob would) once the
run has one, else the progress of the run under way: files and bytes done, and which
instance is doing what (from the leases and the completion records). ``plan`` prints
which instance gets which file under Static coordination, over the run's listing
snapshot when there is one (else over a fresh listing, which it does not store).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

import orjson

from agent.coordination.factory import with_output_names
from agent.coordination.lease import read_leases
from agent.coordination.listing import JOIN, Listing, read_listing, snapshot_verdict
from agent.coordination.plan import format_plan, static_plan
from agent.coordination.records import FileRecord, RecordCache
from agent.coordination.shards import Sharding, shard_files
from agent.coordination.state import StateLayout, read_summary, read_summary_head
from agent.coordination.summary import build_summary
from agent.errors import ExitCode
from agent.job import JobSettings
from agent.results import COMPLETED, FAILED
from agent.storage import InputError, ListingSource, StorageError, Stores, list_inputs, open_stores

log = logging.getLogger("agent.status")


async def current_listing(stores: Stores, job: JobSettings) -> tuple[Listing | None, bool]:
    """The unfinished run's snapshot (``True``), else a fresh listing not stored (``False``)."""
    state = await stores.get(job.state_uri)
    layout = StateLayout(job.state_uri)
    source = await ListingSource.of(
        stores, job.input.data_type, job.input.uri, job.output.uri, job.state_uri
    )
    listing = await read_listing(state, layout)
    if listing is not None:
        summary = await read_summary_head(state, layout)  # its run is all that is asked
        verdict = snapshot_verdict(listing.run_id, listing.fingerprint, summary, source.fingerprint)
        if verdict == JOIN:  # what a start would join
            return listing, True
    exclude = (job.output.uri, job.state_uri)
    files = await list_inputs(stores, job.input.data_type, job.input.uri, exclude=exclude)
    return (Listing("(not started)", "", tuple(files)) if files else None), False


async def plan_lines(stores: Stores, job: JobSettings, count: int) -> list[str]:
    """The static plan of ``job`` over ``count`` instances, as printed by ``bt-agent plan``."""
    listing, stored = await current_listing(stores, job)
    if listing is None:
        return [f"no objects found under {job.input.uri}"]
    layout = StateLayout(job.state_uri)
    records = await RecordCache(await stores.get(job.state_uri), layout).refresh()
    with_output_names(listing, job.output.uri)
    sharding = shard_files(listing.files, job, layout)
    done = frozenset(
        str(item.uri) if item.shard is None else item.id
        for item in [*listing.files, *sharding.units]
        if (record := records.get(item.id)) is not None
        and record.Status == COMPLETED
        and record.final_for(item, None, listing.run_id)
    )
    where = f"the listing snapshot of run {listing.run_id}" if stored else "a fresh listing"
    lines = [f"{job.transform_job_name}: plan over {where}"]
    if job.agent.coordination == "Lease":
        lines.append(
            "Agent.Coordination is Lease: files are claimed at run time, largest first; "
            "the static plan below is for comparison"
        )
    return lines + format_plan(static_plan(sharding.units, count), done=done)


async def status_report(stores: Stores, job: JobSettings) -> tuple[str, int]:
    """What ``bt-agent status`` prints, and its exit code."""
    state = await stores.get(job.state_uri)
    layout = StateLayout(job.state_uri)
    listing = await read_listing(state, layout)
    summary = await read_summary(state, layout)
    if summary is not None and (listing is None or summary.get("RunId") == listing.run_id):
        return orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode(), ExitCode.COMPLETED
    if listing is None:
        return (
            f"{job.transform_job_name}: no state under {job.state_uri}; the job has not "
            "started (or ran with another Agent.StateUri / --state-uri)",
            ExitCode.FAILED,
        )
    records = await RecordCache(state, layout).refresh()
    leases = await read_leases(state, layout)
    lease_mode = job.agent.coordination == "Lease"
    lines = progress_lines(job.transform_job_name, listing, records, leases, lease_mode=lease_mode)
    with_output_names(listing, job.output.uri)
    lines += shard_lines(shard_files(listing.files, job, layout), records, leases, listing.run_id)
    return "\n".join(lines), ExitCode.COMPLETED


def shard_lines(
    sharding: Sharding, records: dict[str, FileRecord], leases: list[dict[str, Any]], run: str
) -> list[str]:
    """The shards of the run's big files (README "Shards"): file, range, instance, state."""
    if not sharding.shards:
        return []
    held = {str(lease.get("Input")): str(lease.get("Instance", "?")) for lease in leases}
    lines = [f"  shards of {len(sharding.shards)} file(s):"]
    for fid, shards in sharding.shards.items():
        whole = records.get(fid)
        lines.append(f"    {sharding.files[fid].uri}: {len(shards)} shards")
        for unit in shards:
            assert unit.shard is not None
            shard = unit.shard
            record = records.get(unit.id)
            label = f"{unit.uri} [{shard.start}, {shard.end})"
            if whole is not None and whole.Status == COMPLETED:
                state = "assembled"
            elif record is not None and record.RunId == run:
                state = f"{record.Status} by {record.Instance}"
            elif label in held:
                state = f"in progress on {held[label]}"
            else:
                state = "to do"
            lines.append(
                f"      {shard.index + 1}/{shard.count} [{shard.start}, {shard.end}): {state}"
            )
    return lines


def progress_lines(
    name: str,
    listing: Listing,
    records: dict[str, FileRecord],
    leases: list[dict[str, Any]],
    *,
    lease_mode: bool = False,
) -> list[str]:
    """Progress of an unfinished run: totals, then one line per instance."""
    progress, _ = build_summary(name, listing, records, None)
    sizes = {str(f.uri): f.info.size for f in listing.files if f.info is not None}
    done_bytes = sum(
        sizes.get(entry["Input"], 0) for entry in progress["Files"] if entry["Status"] == COMPLETED
    )
    total = listing.total_bytes
    share = f" ({100 * done_bytes / total:.1f}%)" if total else ""
    completed, failed = progress["FilesCompleted"], progress["FilesFailed"]
    rest = (
        f"{len(leases)} being processed under lease" if lease_mode or leases else "the rest to do"
    )
    lines = [
        f"{name}: InProgress (run {listing.run_id}, listed at {listing.created_at})",
        f"  files: {completed} of {progress['FilesTotal']} completed, {failed} failed, {rest}",
        f"  bytes: {done_bytes} of {total} input bytes completed{share}",
    ]
    if progress["FailedRecords"]:
        lines.append(
            f"  failed records: {progress['FailedRecords']} in completed files "
            "(each file's <name>.errors.jsonl lists its own)"
        )
    per_instance: dict[str, list[str]] = defaultdict(list)
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for record in records.values():
        if record.RunId == listing.run_id:
            tally = counts[record.Instance]
            tally[0 if record.Status == COMPLETED else 1] += 1
            tally[2] += record.InputBytes
            tally[3] += record.FailedRecords
    for lease in leases:
        label = str(lease.get("Instance", "?"))
        counts.setdefault(label, [0, 0, 0, 0])
        per_instance[label].append(
            f"{lease.get('Input')} (lease renewed {lease.get('Renewal')} times, "
            f"last at {lease.get('RenewedAt')})"
        )
    if counts:
        lines.append("  instances:")
    for label in sorted(counts):
        ok, failed, nbytes, bad = counts[label]
        records_failed = f", {bad} failed records" if bad else ""
        lines.append(
            f"    {label}: {ok} completed, {failed} failed{records_failed}, "
            f"{nbytes} bytes in this run"
        )
        lines.extend(f"      working on {text}" for text in per_instance[label])
    earlier = sum(
        1
        for entry in progress["Files"]
        if entry["Status"] == COMPLETED and entry.get("RunId") != listing.run_id
    )
    if earlier:
        lines.append(f"  {earlier} file(s) were completed by an earlier run and are skipped")
    if progress["FilesFailed"]:
        first = next(e for e in progress["Files"] if e["Status"] == FAILED)
        lines.append(f"  first failure: {first.get('FailureReason')}")
    return lines


def _run(command: str, work: Callable[[Stores], Awaitable[tuple[str, int]]], out: TextIO) -> int:
    async def main() -> tuple[str, int]:
        async with open_stores() as stores:
            return await work(stores)

    try:
        text, code = asyncio.run(main())
    except (InputError, StorageError) as error:  # the class says the exit code: 2 or 1
        print(f"bt-agent {command}: {error}", file=sys.stderr)
        return error.exit_code
    print(text, file=out, flush=True)
    return code


def run_status(job: JobSettings, out: TextIO) -> int:
    """``bt-agent status``: print the summary or the progress to ``out``; the exit code."""
    return _run("status", lambda stores: status_report(stores, job), out)


def run_plan(job: JobSettings, count: int, out: TextIO) -> int:
    """``bt-agent plan``: print which instance gets which file to ``out``; the exit code."""

    async def work(stores: Stores) -> tuple[str, int]:
        lines = await plan_lines(stores, job, count)
        return "\n".join(lines), ExitCode.COMPLETED if len(lines) > 1 else ExitCode.FAILED

    return _run("plan", work, out)
