"""The S3 store against a real SeaweedFS: listing, resumable reads, uploads, conditions."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from agent._compat import MIB
from agent.job import DataUri
from agent.storage import (
    ObjectChangedError,
    ObjectInfo,
    PreconditionFailed,
    S3Store,
    StorageError,
    StorageSettings,
    Stores,
    list_inputs,
    open_stores,
)
from tests.support.servers import SeaweedFS, free_port_block

pytestmark = [pytest.mark.integration, pytest.mark.twin_free]


def s3(bucket: str, key: str) -> DataUri:
    return DataUri("s3", bucket, key)


async def put_many(server: SeaweedFS, bucket: str, objects: dict[str, bytes]) -> None:
    limit = asyncio.Semaphore(32)
    async with server.client() as client:

        async def put(key: str, body: bytes) -> None:
            async with limit:
                await client.put_object(Bucket=bucket, Key=key, Body=body)

        await asyncio.gather(*(put(key, body) for key, body in objects.items()))


async def get(server: SeaweedFS, bucket: str, key: str) -> dict[str, Any] | None:
    async with server.client() as client:
        try:
            response = await client.get_object(Bucket=bucket, Key=key)
        except client.exceptions.NoSuchKey:
            return None
        async with response["Body"] as body:
            response["Data"] = await body.read()
        return dict(response)


async def bucket_store(stores: Stores, bucket: str) -> S3Store:
    store = await stores.get(s3(bucket, ""))
    assert isinstance(store, S3Store)
    return store


async def read_all(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


# ----------------------------------------------------------------------------- listing


async def test_listing_paginates_sorts_and_skips_folders_and_our_prefixes(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str
) -> None:
    keys = [f"in/k-{n:04d}.csv" for n in range(1030)]
    random.shuffle(keys)
    objects = dict.fromkeys(keys, b"1\n")
    objects.update(
        {
            "in/folder/": b"",  # a console "folder": skipped
            "in/folder/x.csv": b"x",
            "in/out/k-0000.csv.out": b"out",  # the job's output under the input prefix
            "in/out/_bt-agent/job/listing.json": b"{}",
            "inbox/other.csv": b"other",
        }
    )
    await put_many(s3_server, bucket, objects)
    pages = 0

    def count(**_: Any) -> None:
        nonlocal pages
        pages += 1

    async with open_stores() as stores:
        client = await stores.s3_client()
        assert client.meta.endpoint_url == s3_server.endpoint_url  # from AWS_ENDPOINT_URL_S3
        client.meta.events.register("before-call.s3.ListObjectsV2", count)
        output = s3(bucket, "in/out")
        files = await list_inputs(
            stores, "S3Prefix", s3(bucket, "in/"), exclude=[output, output.join("_bt-agent/job/")]
        )
        assert pages >= 2
        no_slash = await list_inputs(stores, "S3Prefix", s3(bucket, "in/k-000"))
    expected = sorted(keys) + ["in/folder/x.csv"]
    assert [f.uri.key for f in files] == sorted(expected)
    assert files[0].relative_key == "folder/x.csv"
    assert files[0].info == ObjectInfo(
        "in/folder/x.csv", 1, files[0].info.etag if files[0].info else ""
    )
    assert [f.relative_key for f in no_slash] == [f"k-000{n}.csv" for n in range(10)]


# ----------------------------------------------------------------------------- reads


async def test_streaming_read_in_small_chunks_and_ranges(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str
) -> None:
    data = os.urandom(20 * MIB + 12345)
    await put_many(s3_server, bucket, {"big.bin": data, "empty.csv": b""})
    settings = StorageSettings(
        read_chunk_bytes=256 * 1024, read_ahead_bytes=1 * MIB, range_bytes=8 * MIB
    )
    gets = 0

    def count(**_: Any) -> None:
        nonlocal gets
        gets += 1

    async with open_stores(settings) as stores:
        store = await bucket_store(stores, bucket)
        store.client.meta.events.register("before-call.s3.GetObject", count)
        obj = await store.head("big.bin")
        assert obj is not None and obj.size == len(data)
        async with store.read(obj) as chunks:
            sizes: list[int] = []
            received = bytearray()
            async for chunk in chunks:
                sizes.append(len(chunk))
                received += chunk
        assert bytes(received) == data
        assert max(sizes) == 256 * 1024 and gets == 3  # three 8 MiB ranges
        async with store.read(obj, 5 * MIB - 7, 17 * MIB + 3) as chunks:
            assert await read_all(chunks) == data[5 * MIB - 7 : 17 * MIB + 3]
        empty = await store.head("empty.csv")
        assert empty is not None
        async with store.read(empty) as chunks:
            assert await read_all(chunks) == b""
        async with store.read(obj) as chunks:  # a consumer that stops early releases all
            first = await anext(chunks)
            assert 0 < len(first) <= 256 * 1024 and data.startswith(first)


async def test_errors_name_the_location(s3_env: dict[str, str], bucket: str) -> None:
    async with open_stores(StorageSettings(retry_seconds=1)) as stores:
        missing = await stores.get(s3(f"{bucket}-nope", ""))
        with pytest.raises(StorageError, match=f"listing s3://{bucket}-nope/in/: the bucket"):
            await missing.list_objects("in/")
        store = await bucket_store(stores, bucket)
        assert await store.head("in/none.csv") is None
        gone = ObjectInfo("in/none.csv", 10, '"0123"')
        with pytest.raises(ObjectChangedError, match=f"s3://{bucket}/in/none.csv was deleted"):
            async with store.read(gone) as chunks:
                await read_all(chunks)


async def test_read_resumes_when_seaweedfs_is_killed_and_restarted(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = os.urandom(24 * MIB)
    await put_many(s3_server, bucket, {"big.bin": data})
    settings = StorageSettings(
        read_chunk_bytes=64 * 1024, read_ahead_bytes=128 * 1024, retry_seconds=90
    )
    caplog.set_level(logging.WARNING, logger="agent.storage")
    async with open_stores(settings) as stores:
        store = await bucket_store(stores, bucket)
        obj = await store.head("big.bin")
        assert obj is not None
        received = bytearray()
        async with store.read(obj) as chunks:
            async for chunk in chunks:
                received += chunk
                if len(received) >= MIB:
                    break
            await s3_server.astop(grace_seconds=0)  # SIGKILL, like a crash
            consumer = asyncio.create_task(read_all(chunks))
            try:  # the reader meets the dead server and backs off: wait until it says so
                for _ in range(300):
                    if any("retrying" in r.getMessage() for r in caplog.records):
                        break
                    await asyncio.sleep(0.1)
                assert not consumer.done()
            finally:
                await s3_server.astart()
            received += await consumer
    assert bytes(received) == data
    messages = [record.getMessage() for record in caplog.records]
    assert any("retrying" in message for message in messages), messages


async def test_calls_wait_out_a_server_that_refuses_connections(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.storage")
    async with open_stores(StorageSettings(part_size_bytes=5 * MIB, retry_seconds=90)) as stores:
        store = await bucket_store(stores, bucket)
        await s3_server.astop(grace_seconds=0)  # nothing listens: connections are refused
        try:

            async def upload() -> str:  # a multipart upload started while S3 is away
                async with store.open_upload("out/late.bin") as pending:
                    await pending.write(b"z" * (6 * MIB))
                    return await pending.commit()

            uploading = asyncio.create_task(upload())
            expected = f"starting the upload of s3://{bucket}/out/late.bin: EndpointConnectionError"
            for _ in range(300):  # botocore's own quick retries first, then ours
                if any(r.getMessage().startswith(expected) for r in caplog.records):
                    break
                await asyncio.sleep(0.1)
            assert not uploading.done()
        finally:
            await s3_server.astart()
        etag = await uploading
    got = await get(s3_server, bucket, "out/late.bin")
    assert got is not None and got["ETag"] == etag and got["Data"] == b"z" * (6 * MIB)
    messages = [record.getMessage() for record in caplog.records]
    assert any(message.startswith(expected) for message in messages), messages


async def test_refused_connections_give_up_after_retry_seconds(
    s3_env: dict[str, str], bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    nobody = free_port_block(1) + 1
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{nobody}")
    async with open_stores(StorageSettings(retry_seconds=3)) as stores:
        store = await stores.get(s3(bucket, ""))
        started = time.monotonic()
        with pytest.raises(StorageError, match=r"listing .* failed after .*EndpointConnection"):
            await store.list_objects("in/")
        assert time.monotonic() - started >= 3  # retried for retry_seconds, not given up at once


async def test_object_replaced_mid_read_fails_with_its_key(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str
) -> None:
    await put_many(s3_server, bucket, {"in/x.csv": os.urandom(4 * MIB)})
    settings = StorageSettings(
        read_chunk_bytes=64 * 1024, read_ahead_bytes=64 * 1024, range_bytes=MIB
    )
    async with open_stores(settings) as stores:
        store = await bucket_store(stores, bucket)
        obj = await store.head("in/x.csv")
        assert obj is not None
        with pytest.raises(ObjectChangedError, match=f"s3://{bucket}/in/x.csv changed"):
            async with store.read(obj) as chunks:
                await anext(chunks)
                await put_many(s3_server, bucket, {"in/x.csv": os.urandom(4 * MIB)})
                await read_all(chunks)


# ----------------------------------------------------------------------------- uploads


async def test_small_output_is_one_put_with_metadata(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str
) -> None:
    async with open_stores(StorageSettings(part_size_bytes=5 * MIB)) as stores:
        store = await bucket_store(stores, bucket)
        async with store.open_upload(
            "out/a.csv.out", metadata={"input-etag": "abc"}, content_type="text/csv"
        ) as upload:
            await upload.write(b"1,2\n")
            await upload.write(memoryview(b"x" * (5 * MIB - 4)))  # exactly one part: one PUT
            etag = await upload.commit()
        assert upload.upload_id is None
    got = await get(s3_server, bucket, "out/a.csv.out")
    assert got is not None and got["ETag"] == etag
    assert got["Data"] == b"1,2\n" + b"x" * (5 * MIB - 4)
    assert got["Metadata"] == {"input-etag": "abc"} and got["ContentType"] == "text/csv"


async def test_multipart_upload_is_byte_exact(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str
) -> None:
    data = os.urandom(20 * MIB + 4321)
    upload_ids: list[str | None] = []

    async def record(upload_id: str | None) -> None:
        upload_ids.append(upload_id)

    settings = StorageSettings(part_size_bytes=5 * MIB, max_parts_in_flight=2)
    async with open_stores(settings) as stores:
        store = await bucket_store(stores, bucket)
        async with store.open_upload("out/big.out", on_upload_id=record) as upload:
            view, rng = memoryview(data), random.Random(4)
            while view:
                size = rng.randrange(1, 3 * MIB)
                await upload.write(view[:size])
                view = view[size:]
            etag = await upload.commit()
        # None: told before CreateMultipartUpload, then of its UploadId
        assert upload_ids == [None, upload.upload_id] and upload.bytes_written == len(data)
        assert await store.list_multipart_uploads("out/") == []
    assert etag.endswith('-5"')  # four 5 MiB parts and the rest
    got = await get(s3_server, bucket, "out/big.out")
    assert got is not None and got["Data"] == data


async def test_failed_or_cancelled_upload_leaves_nothing(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str
) -> None:
    settings = StorageSettings(part_size_bytes=5 * MIB)
    async with open_stores(settings) as stores:
        store = await bucket_store(stores, bucket)
        with pytest.raises(RuntimeError, match="model failed"):
            async with store.open_upload("out/failed.out") as upload:
                await upload.write(os.urandom(12 * MIB))
                assert upload.upload_id is not None
                raise RuntimeError("model failed")
        started = asyncio.Event()

        async def endless() -> None:
            async with store.open_upload("out/cancelled.out") as upload:
                while True:
                    await upload.write(bytes(MIB))
                    if upload.upload_id is not None:
                        started.set()

        task = asyncio.create_task(endless())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await store.list_multipart_uploads("out/") == []
        assert await store.list_objects("out/") == []


async def test_conditional_commits(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str
) -> None:
    async with open_stores(StorageSettings(part_size_bytes=5 * MIB)) as stores:
        store = await bucket_store(stores, bucket)
        first = await store.put_bytes("state/lease", b"one", if_none_match=True)
        with pytest.raises(PreconditionFailed, match=f"s3://{bucket}/state/lease"):
            await store.put_bytes("state/lease", b"two", if_none_match=True)
        second = await store.put_bytes("state/lease", b"two", if_match=first)
        with pytest.raises(PreconditionFailed):
            await store.put_bytes("state/lease", b"three", if_match=first)
        assert await store.get_bytes("state/lease") == (b"two", second)

        data = os.urandom(11 * MIB)
        with pytest.raises(PreconditionFailed):
            async with store.open_upload("state/lease") as upload:
                await upload.write(data)
                await upload.commit(if_none_match=True)
        assert await store.list_multipart_uploads("state/") == []
        async with store.open_upload("state/lease") as upload:
            await upload.write(data)
            third = await upload.commit(if_match=second)
        assert await store.get_bytes("state/lease") == (data, third)
        await store.delete("state/lease")
        assert await store.get_bytes("state/lease") is None


async def test_kms_key_is_sent_as_sse_kms(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str
) -> None:
    # SeaweedFS has no KMS: look at the request as signed, then stop it before it is sent.
    key_id = "arn:aws:kms:us-east-1:111122223333:key/bt-test"
    seen: list[dict[str, str]] = []

    class Stop(Exception):
        pass

    def inspect(request: Any, **_: Any) -> None:
        seen.append(dict(request.headers))
        raise Stop

    async with open_stores(StorageSettings(part_size_bytes=5 * MIB)) as stores:
        store = await bucket_store(stores, bucket)
        for operation in ("PutObject", "CreateMultipartUpload"):
            store.client.meta.events.register(f"before-sign.s3.{operation}", inspect)
        for size in (10, 6 * MIB):
            with pytest.raises(StorageError, match="Stop"):
                async with store.open_upload("out/k.out", kms_key_id=key_id) as upload:
                    await upload.write(bytes(size))
                    await upload.commit()
    for headers in seen:
        assert headers["x-amz-server-side-encryption"] == "aws:kms"
        assert headers["x-amz-server-side-encryption-aws-kms-key-id"] == key_id
    assert len(seen) == 2


# ----------------------------------------------------------------------------- manifests


async def test_manifest_lists_entries_and_flags_missing_ones(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str
) -> None:
    document = [{"prefix": f"s3://{bucket}/data/"}, "sub/b.csv", "missing.csv", "a.csv"]
    await put_many(
        s3_server,
        bucket,
        {"data/a.csv": b"a", "data/sub/b.csv": b"bb", "m/manifest.json": orjson.dumps(document)},
    )
    async with open_stores() as stores:
        files = await list_inputs(stores, "ManifestFile", s3(bucket, "m/manifest.json"))
    assert [(f.uri.key, f.relative_key, f.info is None) for f in files] == [
        ("data/sub/b.csv", "sub/b.csv", False),
        ("data/missing.csv", "missing.csv", True),
        ("data/a.csv", "a.csv", False),
    ]
    assert "manifest element 2" in files[1].missing_message()
