"""State on a real S3 (SeaweedFS): snapshot, records, resume, exactly-once commits, status."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import orjson
import pytest

from agent.cli.status import plan_lines, run_status, status_report
from agent.coordination.base import Coordinator
from agent.coordination.claim import OutputTaken
from agent.coordination.commit import (
    META_INPUT_ETAG,
    META_SETTINGS_HASH,
    CommitRule,
    UploadRecorder,
    abort_orphans,
    head_output,
)
from agent.coordination.factory import open_coordinator
from agent.coordination.identity import Identity
from agent.coordination.lease import check_conditional_writes
from agent.coordination.records import SettingsMismatch
from agent.coordination.state import StateLayout
from agent.job import AgentConfig, DataUri, JobSettings, TransformInput, TransformOutput
from agent.results import COMPLETED, FAILED, FileResult
from agent.storage import StorageSettings, Stores, open_stores
from agent.storage.inputs import file_id
from tests.support.servers import SeaweedFS

pytestmark = [pytest.mark.integration, pytest.mark.twin_free]

MIB = 1 << 20


def s3_job(bucket: str, *, mode: str = "Static", count: int = 1) -> JobSettings:
    return JobSettings(
        "job",
        TransformInput("S3Prefix", DataUri("s3", bucket, "in/")),
        TransformOutput(DataUri("s3", bucket, "out")),
        instance_count=count,
        agent=AgentConfig(coordination=mode),  # type: ignore[arg-type]
    )


async def put(server: SeaweedFS, bucket: str, objects: dict[str, bytes]) -> None:
    async with server.client() as client:
        await asyncio.gather(
            *(client.put_object(Bucket=bucket, Key=k, Body=v) for k, v in objects.items())
        )


async def process(coordinator: Coordinator, *, fail: str | None = None) -> list[str]:
    """Stand-in for the pipeline: each .out is the input upper-cased."""
    done = []
    async for claim in coordinator.files():
        async with claim:
            assert claim.output is not None and claim.item.info is not None
            result = FileResult(str(claim.item.uri), str(claim.output), claim.item.info.size)
            source = await coordinator.stores.get(claim.item.uri)
            data = (await source.get_bytes(claim.item.uri.key) or (b"", ""))[0]
            sink = await coordinator.stores.get(claim.output)
            upload = sink.open_upload(
                claim.output.key, metadata=claim.metadata, on_upload_id=claim.on_upload_id
            )
            async with upload:
                if claim.item.relative_key == fail:
                    result.finish(FAILED, f"{claim.item.uri}: the model said no")
                else:
                    await upload.write(data.upper())
                    result.output_etag = await claim.commit(upload)
                    result.records, result.output_bytes = 1, len(data)
                    result.finish(COMPLETED)
            await claim.record(result)
            done.append(claim.item.relative_key)
    return done


async def run_instance(stores: Stores, job: JobSettings, index: int, settings: str) -> list[str]:
    coordinator = await open_coordinator(stores, job, Identity(index, job.instance_count, "test"))
    async with coordinator:
        await coordinator.begin(settings)
        done = await process(coordinator)
        await coordinator.finish(execution_parameters={"MaxConcurrentTransforms": 1})
    return done


async def test_listing_snapshot_is_created_once_by_concurrent_instances(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str
) -> None:
    await put(s3_server, bucket, {f"in/{n}.csv": b"x" * n for n in range(1, 6)})
    job = s3_job(bucket, count=3)

    async def start(index: int) -> Coordinator:
        async with open_stores() as stores:  # a client each, as separate processes have
            return await open_coordinator(stores, job, Identity(index, 3, "test"))

    coordinators = await asyncio.gather(*(start(index) for index in range(3)))
    assert len({c.listing.run_id for c in coordinators}) == 1
    assert len({c.listing.etag for c in coordinators}) == 1
    assert all(c.listing.files == coordinators[0].listing.files for c in coordinators)
    await put(s3_server, bucket, {"in/9.csv": b"late"})  # after the snapshot: not in this run
    async with open_stores() as stores:
        late = await open_coordinator(stores, job, Identity(0, 3, "test"))
    assert late.listing == coordinators[0].listing


async def test_static_three_instances_then_resume_and_settings_change(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str
) -> None:
    sizes = [900, 500, 400, 300, 200, 100, 50, 10, 1]
    await put(s3_server, bucket, {f"in/f{n}.csv": b"a" * size for n, size in enumerate(sizes)})
    job = s3_job(bucket, count=3)
    async with open_stores() as stores:
        shares = await asyncio.gather(*(run_instance(stores, job, i, "h1") for i in range(3)))
        assert sorted(k for share in shares for k in share) == [f"f{n}.csv" for n in range(9)]
        assert shares[0][0] == "f0.csv"  # the largest file leads the first share
        sink = await stores.get(job.output.uri)
        head = await head_output(sink, "out/f3.csv.out")
        assert head is not None and head.metadata is not None
        assert head.metadata[META_SETTINGS_HASH] == "h1"
        assert head.metadata[META_INPUT_ETAG].strip('"')
        text, code = await status_report(stores, job)
        summary = orjson.loads(text)
        assert code == 0 and summary["TransformJobStatus"] == "Completed"
        assert summary["FilesCompleted"] == 9 and len(summary["Instances"]) == 3

        # Rerun: nothing to do, except the input that changed since.
        await put(s3_server, bucket, {"in/f4.csv": b"changed"})
        assert await run_instance(stores, s3_job(bucket), 0, "h1") == ["f4.csv"]
        assert (await sink.get_bytes("out/f4.csv.out") or (b"",))[0] == b"CHANGED"

        # Other settings: refused, unless forced; forced commits replace on the old ETag.
        again = await open_coordinator(stores, s3_job(bucket), Identity(0, 1, "test"))
        with pytest.raises(SettingsMismatch, match="9 file"):
            await again.begin("h2")
        forced = await open_coordinator(stores, s3_job(bucket), Identity(0, 1, "test"), force=True)
        await forced.begin("h2")
        async for claim in forced.files():
            async with claim:
                assert claim.rule.if_match is not None and not claim.rule.if_none_match
                break


async def test_commits_are_conditional_and_uploads_are_recorded(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str
) -> None:
    await put(s3_server, bucket, {"in/a.csv": b"a\n"})
    settings = StorageSettings(part_size_bytes=5 * MIB)
    async with open_stores(settings) as stores, open_stores(settings) as other:
        first = await open_coordinator(stores, s3_job(bucket), Identity(0, 1, "test"))
        await first.begin("h1")
        claim = await anext(first.files())
        assert claim.rule == CommitRule(if_none_match=True)
        assert claim.output is not None
        sink = await stores.get(claim.output)
        async with claim:
            upload = sink.open_upload(
                claim.output.key, metadata=claim.metadata, on_upload_id=claim.on_upload_id
            )
            async with upload:
                await upload.write(b"x" * (5 * MIB + 1))  # one part shipped: multipart
                state = await stores.get(first.layout.root)
                records = await state.list_objects(first.layout.uploads_prefix().key)
                assert len(records) == 1 and upload.upload_id is not None
                # Meanwhile something else commits the same output first. In Static mode
                # no other instance owns this file: that fails it (never "Lost").
                rival = await other.get(claim.output)
                await rival.put_bytes(claim.output.key, b"theirs", if_none_match=True)
                with pytest.raises(OutputTaken, match="written by something other"):
                    await claim.commit(upload)
            assert not claim.lost.is_set()
            await claim.record(FileResult("x", "y", status=FAILED))  # the failure is recorded
        await first.flush_records()
        assert len(await state.list_objects(first.layout.done_prefix.key)) == 1
        assert await state.list_objects(first.layout.uploads_prefix().key) == []
        assert await sink.list_multipart_uploads("out/") == []
        assert (await sink.get_bytes(claim.output.key) or (b"",))[0] == b"theirs"


async def test_orphaned_uploads_are_aborted(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str
) -> None:
    layout = StateLayout(DataUri("s3", bucket, "state/"))
    async with open_stores() as stores:
        sink = await stores.get(DataUri("s3", bucket, ""))
        state = await stores.get(layout.root)
        client = await stores.s3_client()
        fids = [file_id(f"s3://{bucket}/in/{n}") for n in range(3)]
        for n, fid in enumerate(fids):
            output = DataUri("s3", bucket, f"out/{n}.out")
            created = await client.create_multipart_upload(Bucket=bucket, Key=output.key)
            recorder = UploadRecorder(state, layout, fid, output, holder=f"dead-{n}")
            await recorder.record(created["UploadId"])  # ...and the instance was killed
        assert len(await sink.list_multipart_uploads("out/")) == 3
        assert await abort_orphans(stores, layout, [fids[0]]) == 1
        assert await abort_orphans(stores, layout, keep_holder="dead-1") == 1
        assert [u.key for u in await sink.list_multipart_uploads("out/")] == ["out/1.out"]
        assert await abort_orphans(stores, layout) == 1
        assert await sink.list_multipart_uploads("out/") == []
        assert await state.list_objects("state/uploads/") == []


async def test_conditional_write_probe_passes_on_seaweedfs(
    s3_env: dict[str, str], bucket: str
) -> None:
    layout = StateLayout(DataUri("s3", bucket, "state/"))
    async with open_stores() as stores:
        store = await stores.get(layout.root)
        await check_conditional_writes(store, layout)
        assert await store.list_objects("state/") == []


async def test_status_and_plan_output(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await put(s3_server, bucket, {"in/big.csv": b"b" * 300, "in/mid.csv": b"m" * 200})
    await put(s3_server, bucket, {"in/small.csv": b"s" * 100, "in/bad.csv": b"!"})
    job = s3_job(bucket, count=2)
    assert await asyncio.to_thread(run_status, job, io.StringIO()) == 1  # nothing started yet
    async with open_stores() as stores:
        lines = await plan_lines(stores, job, 2)
        assert lines[0] == "job: plan over a fresh listing"
        assert "expected imbalance 1.002" in lines[1]
        coordinator = await open_coordinator(stores, job, Identity(0, 2, "test"))
        await coordinator.begin("h1")
        # Instance 0's share (big.csv and bad.csv by size), in listing order.
        assert await process(coordinator, fail="bad.csv") == ["bad.csv", "big.csv"]
        assert await coordinator.finish() is None  # instance 0 has not run: not final
        lines = await plan_lines(stores, job, 2)
        assert lines[0].startswith("job: plan over the listing snapshot of run ")
        assert any(line.endswith("/in/big.csv (completed)") for line in lines)
    out = io.StringIO()
    assert await asyncio.to_thread(run_status, job, out) == 0  # as `bt-agent status` does
    progress = out.getvalue()
    print(progress)  # shown with -s: the progress of a run under way
    assert "files: 1 of 4 completed, 1 failed, the rest to do" in progress
    assert "bytes: 300 of 601 input bytes completed (49.9%)" in progress
    assert "(instance 0 of 2): 1 completed, 1 failed, 301 bytes in this run" in progress
    assert "first failure: s3://" in progress and "the model said no" in progress
    async with open_stores() as stores:
        assert await run_instance(stores, job, 1, "h1") == ["mid.csv", "small.csv"]
    out = io.StringIO()
    assert await asyncio.to_thread(run_status, job, out) == 0
    summary: dict[str, Any] = orjson.loads(out.getvalue())
    print(out.getvalue())
    assert summary["TransformJobStatus"] == "Failed"
    assert summary["FailureReason"].startswith("1 of 4 files failed: s3://")
    assert (summary["FilesCompleted"], summary["FilesFailed"]) == (3, 1)
    assert summary["ExecutionParameters"] == {"MaxConcurrentTransforms": 1}


async def test_an_output_committed_by_an_instance_that_died_is_recorded_without_counts(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str
) -> None:
    """Killed between a commit and its record: the next run records the output without
    redoing it, and says its counts are unknown rather than zero (found by the soak)."""
    await put(s3_server, bucket, {"in/a.csv": b"a\n", "in/b.csv": b"b\n"})
    job = s3_job(bucket)
    async with open_stores() as stores:
        dying = await open_coordinator(stores, job, Identity(0, 1, "test"))
        await dying.begin("h1")
        claim = await anext(dying.files())
        assert claim.output is not None
        sink = await stores.get(claim.output)
        upload = sink.open_upload(
            claim.output.key, metadata=claim.metadata, on_upload_id=claim.on_upload_id
        )
        async with upload:
            await upload.write(b"A\n")
            await claim.commit(upload)
        # ... and the instance dies here: no record is written for the committed output.
    async with open_stores() as stores:
        coordinator = await open_coordinator(stores, job, Identity(0, 1, "test"))
        async with coordinator:
            await coordinator.begin("h1")
            done = await process(coordinator)
            summary = await coordinator.finish()
    assert done == ["b.csv"]  # a.csv was recorded, not redone
    assert summary is not None
    assert (summary["TransformJobStatus"], summary["FilesCompleted"]) == ("Completed", 2)
    assert summary["FilesWithoutCounts"] == 1
    assert summary["Records"] == 1  # b.csv's; a.csv's count died with its instance
    async with open_stores() as stores:
        state = await stores.get(coordinator.layout.root)
        found = await state.get_bytes(coordinator.layout.summary.key)
    assert found is not None
    entries = {e["Input"]: e for e in orjson.loads(found[0])["Files"]}
    assert entries[f"s3://{bucket}/in/a.csv"]["CountsUnknown"] is True
    assert "CountsUnknown" not in entries[f"s3://{bucket}/in/b.csv"]
