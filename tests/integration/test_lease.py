"""Lease coordination against SeaweedFS: claims, takeover after a whole TTL, self-stop.

Each "instance" has its own S3 client (its own ``Stores``), as separate processes would.
A killed instance is simulated by stopping its renewals and abandoning its work; a
paused one (SIGSTOP) by blocking the thread that runs its event loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from agent.coordination.base import Coordinator
from agent.coordination.claim import Claim
from agent.coordination.factory import open_coordinator
from agent.coordination.identity import Identity
from agent.coordination.lease import ClaimLost, LeaseLost, LeaseSettings
from agent.job import AgentConfig, DataUri, JobSettings, TransformInput, TransformOutput
from agent.results import COMPLETED, FileResult
from agent.storage import PreconditionFailed, StorageSettings, Stores, open_stores
from tests.support.servers import SeaweedFS

pytestmark = [pytest.mark.integration, pytest.mark.twin_free]

MIB = 1 << 20
LEASE = LeaseSettings(
    ttl_seconds=2.0,
    renew_seconds=0.3,
    margin_seconds=0.6,
    poll_seconds=0.2,
    request_timeout_seconds=0.5,
)
SMALL_PARTS = StorageSettings(part_size_bytes=5 * MIB)


def lease_job(bucket: str) -> JobSettings:
    return JobSettings(
        "job",
        TransformInput("S3Prefix", DataUri("s3", bucket, "in/")),
        TransformOutput(DataUri("s3", bucket, "out")),
        agent=AgentConfig(coordination="Lease"),
    )


async def setup(server: SeaweedFS, bucket: str, objects: dict[str, bytes]) -> None:
    async with server.client() as client:
        await client.put_bucket_versioning(
            Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
        )
        for key, body in objects.items():
            await client.put_object(Bucket=bucket, Key=key, Body=body)


async def versions(server: SeaweedFS, bucket: str) -> dict[str, int]:
    """How many versions each output has (1 each: no output was committed twice)."""
    async with server.client() as client:
        listed = await client.list_object_versions(Bucket=bucket, Prefix="out/")
    counts: dict[str, int] = {}
    for version in listed.get("Versions", []):
        if version["Key"].endswith(".out"):
            counts[version["Key"]] = counts.get(version["Key"], 0) + 1
    return counts


async def open_instance(stores: Stores, job: JobSettings) -> Coordinator:
    coordinator = await open_coordinator(stores, job, Identity(0, 1, "test"), lease_settings=LEASE)
    await coordinator.begin("h1")
    return coordinator


async def transform(
    coordinator: Coordinator,
    claim: Claim,
    *,
    tag: bytes = b"",
    pause: Callable[[], Awaitable[Any]] | None = None,
) -> FileResult:
    """Stand-in for the pipeline: the .out is the input upper-cased (plus ``tag``)."""
    assert claim.output is not None and claim.item.info is not None
    result = FileResult(str(claim.item.uri), str(claim.output), claim.item.info.size)
    source = await coordinator.stores.get(claim.item.uri)
    data = (await source.get_bytes(claim.item.uri.key) or (b"", ""))[0]
    sink = await coordinator.stores.get(claim.output)
    upload = sink.open_upload(
        claim.output.key, metadata=claim.metadata, on_upload_id=claim.on_upload_id
    )
    async with upload:
        await upload.write(data.upper() + tag)
        if pause is not None:
            await pause()
        result.output_etag = await claim.commit(upload)
    result.finish(COMPLETED)
    return result


async def run_all(coordinator: Coordinator, log: list[tuple[str, float]]) -> None:
    """Process every file this instance can claim; log (file, time claimed)."""
    async with coordinator:
        async for claim in coordinator.files():
            log.append((claim.item.relative_key, time.monotonic()))
            async with claim:
                result = await claim.run(transform(coordinator, claim))
                await claim.record(result)
        await coordinator.finish()


async def test_two_instances_started_at_once_over_one_file(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str
) -> None:
    await setup(s3_server, bucket, {"in/only.csv": b"one file\n"})
    job = lease_job(bucket)
    logs: list[list[tuple[str, float]]] = [[], []]
    async with open_stores() as first, open_stores() as second:
        instances = await asyncio.gather(open_instance(first, job), open_instance(second, job))
        assert instances[0].listing.run_id == instances[1].listing.run_id
        await asyncio.gather(*(run_all(c, log) for c, log in zip(instances, logs, strict=True)))
        state = await first.get(job.state_uri)
        assert await state.list_objects(instances[0].layout.leases_prefix.key) == []
        sink = await first.get(job.output.uri)
        assert (await sink.get_bytes("out/only.csv.out") or (b"",))[0] == b"ONE FILE\n"
    assert sorted(len(log) for log in logs) == [0, 1]  # exactly one processed it
    assert await versions(s3_server, bucket) == {"out/only.csv.out": 1}


async def test_a_killed_holders_file_is_taken_over_after_the_ttl(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str
) -> None:
    await setup(s3_server, bucket, {"in/a-big.csv": b"big\n" * 100, "in/b-small.csv": b"s\n"})
    job = lease_job(bucket)
    async with open_stores(SMALL_PARTS) as dead, open_stores(SMALL_PARTS) as alive:
        victim = await open_instance(dead, job)
        claims = victim.files()
        claim = await anext(claims)
        assert claim.item.relative_key == "a-big.csv" and claim.lease is not None  # largest first
        sink = await dead.get(job.output.uri)
        upload = sink.open_upload(claim.output.key, on_upload_id=claim.on_upload_id)  # type: ignore[union-attr]
        await upload.write(b"x" * (5 * MIB + 1))  # a multipart upload, recorded in state
        await asyncio.sleep(LEASE.renew_seconds)  # a renewal or two...
        await claim.lease.stop()  # ...then SIGKILL: no more renewals, nothing released
        killed = time.monotonic()

        log: list[tuple[str, float]] = []
        await run_all(await open_instance(alive, job), log)
        assert [key for key, _ in log] == ["b-small.csv", "a-big.csv"]
        assert log[1][1] - killed >= LEASE.ttl_seconds - LEASE.renew_seconds
        with pytest.raises(LeaseLost, match="not renewed"):
            claim.check()
        assert await sink.list_multipart_uploads("out/") == []  # the orphan was aborted
        assert (await sink.get_bytes("out/a-big.csv.out") or (b"",))[0] == b"BIG\n" * 100
        state = await alive.get(job.state_uri)
        summary = await state.get_bytes(victim.layout.summary.key)
        assert summary is not None  # compact JSON since it grows with the files
        assert orjson.loads(summary[0])["TransformJobStatus"] == "Completed"
        await upload.abort()  # the dead instance's object, for a clean test exit
        await claims.aclose()
    assert await versions(s3_server, bucket) == {"out/a-big.csv.out": 1, "out/b-small.csv.out": 1}


async def test_a_holder_that_cannot_renew_stops_before_anyone_takes_over(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await setup(s3_server, bucket, {"in/f.csv": b"f\n"})
    job = lease_job(bucket)
    async with open_stores() as cut_off, open_stores() as other:
        holder = await open_instance(cut_off, job)
        claims = holder.files()
        claim = await anext(claims)
        assert claim.lease is not None
        await asyncio.sleep(LEASE.renew_seconds * 2)  # renewals work for a while

        async def unreachable(*args: Any, **kwargs: Any) -> str:
            await asyncio.sleep(3600)  # the network to S3 is gone for this instance
            raise AssertionError

        monkeypatch.setattr(claim.lease.store, "put_bytes", unreachable)
        lost_at: list[float] = []

        async def work() -> None:
            try:
                await asyncio.sleep(3600)
            finally:
                lost_at.append(time.monotonic())

        log: list[tuple[str, float]] = []
        taker = asyncio.create_task(run_all(await open_instance(other, job), log))
        with pytest.raises(LeaseLost, match="not renewed"):
            await claim.run(work())  # the pipeline is cancelled (its upload aborted)
        await taker
        # Stopped by its deadline (TTL minus the margin after its last renewal was sent; the
        # unit tests pin that boundary on a manual clock), and before the takeover, which
        # came no sooner than a margin after that deadline.
        assert claim.lease.deadline <= lost_at[0] < log[0][1]
        assert log[0][1] - claim.lease.deadline >= LEASE.margin_seconds
        await claims.aclose()
    assert await versions(s3_server, bucket) == {"out/f.csv.out": 1}


async def test_a_paused_holder_does_not_commit_over_the_taker(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str
) -> None:
    await setup(s3_server, bucket, {"in/f.csv": b"f\n"})
    job = lease_job(bucket)
    claimed = threading.Event()
    outcome: list[BaseException | str] = []
    # An instance on a thread and loop of its own: time.sleep freezes it like SIGSTOP.
    thread = threading.Thread(target=asyncio.run, args=(paused_holder(job, claimed, outcome),))
    thread.start()
    try:
        await asyncio.to_thread(claimed.wait, 10)
        log: list[tuple[str, float]] = []
        async with open_stores() as stores:
            await run_all(await open_instance(stores, job), log)
            sink = await stores.get(job.output.uri)
            assert (await sink.get_bytes("out/f.csv.out") or (b"",))[0] == b"F\n"
    finally:
        await asyncio.to_thread(thread.join, 20)
    assert [key for key, _ in log] == ["f.csv"]
    assert len(outcome) == 2, outcome
    assert isinstance(outcome[0], LeaseLost) and isinstance(outcome[1], PreconditionFailed)
    assert await versions(s3_server, bucket) == {"out/f.csv.out": 1}


async def paused_holder(
    job: JobSettings, claimed: threading.Event, outcome: list[BaseException | str]
) -> None:
    async with open_stores() as stores:
        coordinator = await open_instance(stores, job)
        claim = await anext(coordinator.files())
        assert claim.output is not None
        sink = await stores.get(claim.output)
        async with claim, sink.open_upload(claim.output.key, metadata=claim.metadata) as upload:
            await upload.write(b"LATE")
            claimed.set()
            time.sleep(LEASE.ttl_seconds + 2.5)  # SIGSTOP ... SIGCONT
            try:
                await claim.commit(upload)  # the lease check stops it...
                outcome.append("committed")
            except ClaimLost as error:
                outcome.append(error)
            try:
                await upload.commit(**claim.rule.kwargs)  # ...and so would S3
                outcome.append("committed")
            except PreconditionFailed as error:
                outcome.append(error)
