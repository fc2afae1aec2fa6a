"""Shards of big files (README "Shards", docs/design.md §4.10): which files are cut, where.

With ``Agent.ShardSizeMB`` above 0 a file larger than that, of SplitType Line, RecordIO
or TFRecord and not gzip, is cut into shards of about that many MiB. Each shard is a unit
of the plan, of leases, of completion records and of resume, as a whole file is; its
output waits under the state prefix (``shards/<file-id>/<start>-<end>.out``) until the
instance that settles the file's last shard assembles the file's ``.out`` from them.

The cut is a function of the listing and the setting alone, so every instance computes
the same shards without talking to the others (nothing of it is stored).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.coordination.state import StateLayout
from agent.job import DataUri, JobSettings
from agent.split import SHARDABLE_SPLIT_TYPES
from agent.storage import InputFile, Shard

log = logging.getLogger("agent.coordinate")


@dataclass(frozen=True, slots=True)
class Sharding:
    """The run's units of work, and each sharded file's shards in file order."""

    units: tuple[InputFile, ...]  # whole files and shards, in listing order
    shards: dict[str, tuple[InputFile, ...]] = field(default_factory=dict)  # by file id
    files: dict[str, InputFile] = field(default_factory=dict)  # the sharded files, by id


def why_not_sharded(job: JobSettings) -> str | None:
    """Why no file of ``job`` is sharded although ``ShardSizeMB`` is set, or ``None``."""
    split_type = job.input.split_type
    if split_type not in SHARDABLE_SPLIT_TYPES:
        return (
            f"SplitType {split_type}: a file is one record, and a record is never cut; "
            "Agent.ShardSizeMB is ignored"
        )
    if job.input.compression != "None":
        return (
            "CompressionType Gzip: a gzip stream can only be read from its start; "
            "Agent.ShardSizeMB is ignored"
        )
    return None


def cut(item: InputFile, shard_bytes: int, layout: StateLayout) -> tuple[InputFile, ...]:
    """``item``'s shards: ``ceil(size / shard_bytes)`` ranges of equal size (within a byte),
    each with its output under the state prefix; ``()`` when the file is not cut."""
    info = item.info
    if info is None or item.problem is not None or item.output is None or shard_bytes <= 0:
        return ()
    size = info.size
    if size <= shard_bytes:
        return ()
    count = -(-size // shard_bytes)
    edges = [size * k // count for k in range(count + 1)]
    shards = (Shard(k, count, edges[k], edges[k + 1]) for k in range(count))
    return tuple(
        shard_unit(item, shard, layout.shard_output(item.id, shard.name)) for shard in shards
    )


def shard_unit(item: InputFile, shard: Shard, output: DataUri | None) -> InputFile:
    """The unit of work that is ``shard`` of ``item``'s object, writing to ``output``."""
    unit = InputFile(item.uri, item.relative_key, item.info, item.manifest_index, shard=shard)
    object.__setattr__(unit, "output", output)
    return unit


def shard_files(files: Sequence[InputFile], job: JobSettings, layout: StateLayout) -> Sharding:
    """The run's units: each file, or in its place its shards (see the module docstring)."""
    shard_bytes = job.agent.shard_bytes
    if shard_bytes <= 0:
        return Sharding(tuple(files))
    reason = why_not_sharded(job)
    if reason is not None:
        log.info("no file is sharded: %s", reason)
        return Sharding(tuple(files))
    units: list[InputFile] = []
    shards: dict[str, tuple[InputFile, ...]] = {}
    sharded: dict[str, InputFile] = {}
    for item in files:
        cut_up = cut(item, shard_bytes, layout)
        if cut_up:
            shards[item.id] = cut_up
            sharded[item.id] = item
            units.extend(cut_up)
        else:
            units.append(item)
    if shards:
        log.info(
            "%d file(s) over %d MiB cut into %d shards",
            len(shards),
            job.agent.shard_size_mb,
            sum(len(found) for found in shards.values()),
        )
    return Sharding(tuple(units), shards, sharded)
