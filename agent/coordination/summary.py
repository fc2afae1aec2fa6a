"""The job summary (``summary.json``), built from the completion records over one listing
snapshot, so any instance can write it: the fields DescribeTransformJob gives, then one
entry per file, written a piece at a time (``summary_pieces``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from agent.coordination.listing import Listing
from agent.coordination.records import FileRecord
from agent.coordination.state import STATE_FORMAT, now_iso
from agent.jsonstream import document_pieces
from agent.results import COMPLETED, FAILED, IN_PROGRESS, STOPPED
from agent.storage import InputFile


def build_summary(
    job_name: str,
    listing: Listing,
    records: Mapping[str, FileRecord],
    settings_hash: str | None,
    *,
    stopped: str | None = None,
    execution_parameters: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], bool]:
    """The job summary over ``listing``, and whether every file has a final record.

    Status: ``Completed`` when every file completed, ``Failed`` when every file is final
    and some failed, else ``Stopped`` if ``stopped`` gives a reason, else ``InProgress``.
    The whole document, per-file entries included (``summary_bytes`` serialises it without
    building them all at once).
    """
    summary, final = summary_head(
        job_name,
        listing,
        records,
        settings_hash,
        stopped=stopped,
        execution_parameters=execution_parameters,
    )
    summary["Files"] = list(summary_entries(listing, records, settings_hash))
    return summary, final


def _final_record(
    item: InputFile, records: Mapping[str, FileRecord], settings_hash: str | None, run_id: str
) -> FileRecord | None:
    record = records.get(item.id)
    return record if record is not None and record.final_for(item, settings_hash, run_id) else None


def summary_head(
    job_name: str,
    listing: Listing,
    records: Mapping[str, FileRecord],
    settings_hash: str | None,
    *,
    stopped: str | None = None,
    execution_parameters: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], bool]:
    """``build_summary`` without the per-file entries: ``"Files"`` stands where they go,
    as ``None``. One pass over the listing; nothing per file is kept."""
    count = failed = records_sent = requests = in_bytes = out_bytes = failed_records = 0
    shards = unknown = 0
    first_failure: FileRecord | None = None
    instances: set[str] = set()
    run_id = listing.run_id
    for item in listing.files:
        record = _final_record(item, records, settings_hash, run_id)
        if record is None:
            continue
        count += 1
        if record.Status == FAILED:
            failed += 1
            if first_failure is None:
                first_failure = record
        records_sent += record.Records
        failed_records += record.FailedRecords
        requests += record.Requests
        in_bytes += record.InputBytes
        out_bytes += record.OutputBytes
        shards += record.Shards
        unknown += record.CountsUnknown
        if record.RunId == run_id:
            instances.add(record.Instance)
    final = count == len(listing.files)
    reason = None
    if final:
        status = FAILED if failed else COMPLETED
        if first_failure is not None:
            reason = f"{failed} of {count} files failed: {first_failure.FailureReason}"
    else:
        status, reason = (STOPPED, stopped) if stopped else (IN_PROGRESS, None)
    summary: dict[str, Any] = {
        "Format": STATE_FORMAT,
        "TransformJobName": job_name,
        "TransformJobStatus": status,
        "RunId": run_id,
        "TransformStartTime": listing.created_at,
        "TransformEndTime": now_iso(),
        "ExecutionParameters": dict(execution_parameters or {}),
        "FilesTotal": len(listing.files),
        "FilesCompleted": count - failed,
        "FilesFailed": failed,
        "Records": records_sent,
        "FailedRecords": failed_records,
        "Requests": requests,
        "InputBytes": in_bytes,
        "OutputBytes": out_bytes,
        "Instances": sorted(instances),
        "Files": None,
    }
    if shards:  # files cut into shards (README "Shards"): how many shards they made
        summary["Shards"] = shards
    if unknown:  # their counts died with the instance that committed them (§4.7)
        summary["FilesWithoutCounts"] = unknown
    if reason:
        summary["FailureReason"] = reason
    return summary, final


def summary_entries(
    listing: Listing, records: Mapping[str, FileRecord], settings_hash: str | None
) -> Iterator[dict[str, Any]]:
    """The summary's per-file entries, in listing order, one at a time."""
    run_id = listing.run_id
    for item in listing.files:
        record = _final_record(item, records, settings_hash, run_id)
        if record is not None:
            yield record.summary_entry(run_id)
        else:
            yield {"Input": str(item.uri), "Status": IN_PROGRESS}


def summary_pieces(
    head: Mapping[str, Any],
    listing: Listing,
    records: Mapping[str, FileRecord],
    settings_hash: str | None,
) -> Iterator[bytes]:
    """``summary.json`` in pieces: ``head`` (``summary_head``) with its entries, as
    ``agent.coordination.state.dumps(..., compact=True)`` writes it, each entry serialised
    as it is made (never a dict per file, nor the whole text at once)."""
    entries = summary_entries(listing, records, settings_hash)
    yield from document_pieces(head, "Files", entries)
    yield b"\n"
