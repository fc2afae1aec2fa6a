"""``Upload.append``: stored objects joined into one output, server-side where S3 allows.

Against a real SeaweedFS (which honours UploadPartCopy, ``CopySourceRange`` and
``CopySourceIfMatch``) and the local file system. Every S3 request the agent's client sends
is recorded (a handler on the client's own events, nothing replaced), so the tests see which
objects were copied by the server and which were read through the agent, and the size of
every part sent.
"""

from __future__ import annotations

import asyncio
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent._compat import MIB
from agent.job import DataUri
from agent.storage import (
    MIN_PART_BYTES,
    ObjectChangedError,
    ObjectInfo,
    PreconditionFailed,
    S3Store,
    StorageSettings,
    Store,
    Stores,
    Upload,
    open_stores,
)
from tests.support.servers import SeaweedFS

pytestmark = [pytest.mark.integration, pytest.mark.twin_free]

KIB = 1024
SIZES = {"empty": 0, "1k": KIB, "5m-1": 5 * MIB - 1, "5m": 5 * MIB, "7m": 7 * MIB}

# An output is a list of steps: a name (an object of SIZES, ``-b`` a second one of that
# size) is appended, bytes are written.
CASES: dict[str, list[str | bytes]] = {
    # joined into one buffer of less than a part: one PutObject
    "only-small": ["empty", b"head\n", "1k", "5m-1", b"between\n", "1k-b", "empty-b"],
    # each copied whole, nothing read
    "only-big": ["5m", "7m", "5m-b", "7m-b"],
    # 7m copied; then the buffer stays under 5 MiB before each object, whose rest after
    # filling it would be under 5 MiB too: streamed, joined with its neighbours
    "small-after-big": ["7m", "1k", "5m", b"mid\n", "empty", "5m-1", "7m-b"],
    # 7m streamed (1 KiB before it); 5m copied after a big buffer; 7m-b copied after 1 byte
    # of it fills the 5 MiB - 1 buffer to 5 MiB
    "big-after-small": ["1k", b"w\n", "7m", "5m", "5m-1", "7m-b", b"tail"],
}
# (object, CopySourceRange or None for a whole copy) for each case, in order
COPIED: dict[str, list[tuple[str, str | None]]] = {
    "only-small": [],
    "only-big": [("5m", None), ("7m", None), ("5m-b", None), ("7m-b", None)],
    "small-after-big": [("7m", None)],
    "big-after-small": [("5m", None), ("7m-b", f"bytes=1-{7 * MIB - 1}")],
}
# (object, Range) of each GET
READ: dict[str, list[tuple[str, str]]] = {
    "only-small": [
        ("1k", "bytes=0-1023"),
        ("5m-1", f"bytes=0-{5 * MIB - 2}"),
        ("1k-b", "bytes=0-1023"),
    ],
    "only-big": [],
    "small-after-big": [
        ("1k", "bytes=0-1023"),
        ("5m", f"bytes=0-{5 * MIB - 1}"),
        ("5m-1", f"bytes=0-{5 * MIB - 2}"),
        ("7m-b", f"bytes=0-{7 * MIB - 1}"),
    ],
    "big-after-small": [
        ("1k", "bytes=0-1023"),
        ("7m", f"bytes=0-{7 * MIB - 1}"),
        ("5m-1", f"bytes=0-{5 * MIB - 2}"),
        ("7m-b", "bytes=0-0"),
    ],
}


def contents() -> dict[str, bytes]:
    names = {step for steps in CASES.values() for step in steps if isinstance(step, str)}
    return {name: os.urandom(SIZES[name.removesuffix("-b")]) for name in sorted(names)}


def expected_bytes(case: str, objects: dict[str, bytes]) -> bytes:
    return b"".join(objects[s] if isinstance(s, str) else s for s in CASES[case])


def copy_source(params: dict[str, Any]) -> str:
    """The key an UploadPartCopy copies from (botocore has made ``CopySource`` the header's
    ``bucket/key`` string by the time the handlers run)."""
    source = params["CopySource"]
    if isinstance(source, dict):
        return str(source["Key"])
    return urllib.parse.unquote(source).split("/", 1)[1]


class Requests:
    """Every S3 request a client sends, with its parameters, and how many copies ran at
    once (the client's own event hooks; the requests themselves are untouched)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.copying = 0
        self.most_copying = 0
        client.meta.events.register("before-parameter-build.s3", self._record)
        client.meta.events.register("before-call.s3.UploadPartCopy", self._copy_starts)
        client.meta.events.register("after-call.s3.UploadPartCopy", self._copy_ends)

    def _record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.sent.append((model.name, dict(params)))

    def _copy_starts(self, **_: Any) -> None:
        self.copying += 1
        self.most_copying = max(self.most_copying, self.copying)

    def _copy_ends(self, **_: Any) -> None:
        self.copying -= 1

    def of(self, operation: str) -> list[dict[str, Any]]:
        return [params for name, params in self.sent if name == operation]

    def copies(self, prefix: str) -> list[tuple[str, str | None]]:
        return [
            (copy_source(p).removeprefix(prefix), p.get("CopySourceRange"))
            for p in self.of("UploadPartCopy")
        ]

    def reads(self, prefix: str) -> list[tuple[str, str]]:
        return [
            (p["Key"].removeprefix(prefix), p["Range"])
            for p in self.of("GetObject")
            if p["Key"].startswith(prefix)
        ]

    def part_sizes(self, objects: dict[str, int]) -> list[int]:
        """The size of each part sent, in part-number order (``objects``: key -> size)."""
        sizes: dict[int, int] = {}
        for name, params in self.sent:
            if name == "UploadPart":
                sizes[params["PartNumber"]] = len(params["Body"].getvalue())
            elif name == "UploadPartCopy":
                span = params.get("CopySourceRange")
                if span is None:
                    size = objects[copy_source(params)]
                else:
                    first, last = span.removeprefix("bytes=").split("-")
                    size = int(last) - int(first) + 1
                sizes[params["PartNumber"]] = size
        assert sorted(sizes) == list(range(1, len(sizes) + 1))
        return [sizes[number] for number in sorted(sizes)]


def s3(bucket: str, key: str = "") -> DataUri:
    return DataUri("s3", bucket, key)


async def s3_store(stores: Stores, bucket: str) -> S3Store:
    store = await stores.get(s3(bucket))
    assert isinstance(store, S3Store)
    return store


async def put_objects(
    store: S3Store, prefix: str, objects: dict[str, bytes]
) -> dict[str, ObjectInfo]:
    async def put(name: str, data: bytes) -> tuple[str, ObjectInfo]:
        etag = await store.put_bytes(prefix + name, data)
        return name, ObjectInfo(prefix + name, len(data), etag)

    return dict(await asyncio.gather(*(put(name, data) for name, data in objects.items())))


def write_files(directory: Path, objects: dict[str, bytes]) -> dict[str, ObjectInfo]:
    directory.mkdir(parents=True, exist_ok=True)
    infos = {}
    for name, data in objects.items():
        path = directory / name
        path.write_bytes(data)
        stat = path.stat()
        infos[name] = ObjectInfo(str(path), len(data), f"{stat.st_size}-{stat.st_mtime_ns}")
    return infos


async def fill(upload: Upload, case: str, source: Store, infos: dict[str, ObjectInfo]) -> None:
    for step in CASES[case]:
        if isinstance(step, str):
            await upload.append(source, infos[step])
        else:
            await upload.write(step)


async def body_of(store: Store, key: str) -> bytes:
    info = await store.head(key)
    assert info is not None, key
    async with store.read(info) as chunks:
        return b"".join([chunk async for chunk in chunks])


@pytest.fixture
def other_bucket(s3_server: SeaweedFS, bucket: str) -> Iterator[str]:
    """A second bucket of the same server, for objects copied across buckets."""
    name = f"{bucket[:57]}-other"
    client = s3_server.sync_client()
    try:
        client.create_bucket(Bucket=name)
        yield name
        if s3_server.running():
            client.delete_bucket(Bucket=name)
    finally:
        client.close()


@pytest.fixture(scope="module")
def objects() -> dict[str, bytes]:
    return contents()


# ----------------------------------------------------------------------------- S3 to S3


@pytest.mark.parametrize("where", ["same-bucket", "other-bucket"])
@pytest.mark.parametrize("case", list(CASES))
async def test_s3_output_joins_objects_copying_the_big_ones(
    s3_env: dict[str, str],
    bucket: str,
    other_bucket: str,
    objects: dict[str, bytes],
    case: str,
    where: str,
) -> None:
    source_bucket = bucket if where == "same-bucket" else other_bucket
    prefix = "state/shards/"
    async with open_stores() as stores:
        out, source = await s3_store(stores, bucket), await s3_store(stores, source_bucket)
        infos = await put_objects(source, prefix, objects)
        requests = Requests(out.client)
        metadata = {"bt-agent-job": "j"}
        async with out.open_upload("out/x.out", metadata=metadata, content_type="text/csv") as up:
            await fill(up, case, source, infos)
            etag = await up.commit(if_none_match=True)
        expected = expected_bytes(case, objects)
        assert up.bytes_written == len(expected)
        assert await body_of(out, "out/x.out") == expected
        assert requests.copies(prefix) == COPIED[case]
        assert requests.reads(prefix) == READ[case]
        if case == "only-small":
            assert up.upload_id is None and len(requests.of("PutObject")) == 1
        else:
            sizes = requests.part_sizes({info.key: info.size for info in infos.values()})
            assert sum(sizes) == len(expected)
            assert min(sizes[:-1]) >= MIN_PART_BYTES, sizes
            complete = requests.of("CompleteMultipartUpload")
            parts = complete[0]["MultipartUpload"]["Parts"]
            assert [part["PartNumber"] for part in parts] == list(range(1, len(sizes) + 1))
            assert complete[0]["IfNoneMatch"] == "*"
        assert requests.most_copying <= out.settings.max_parts_in_flight
        head = await out.client.head_object(Bucket=bucket, Key="out/x.out")
        assert head["ETag"] == etag
        assert head["Metadata"] == metadata and head["ContentType"] == "text/csv"
        assert await out.list_multipart_uploads("out/") == []


async def test_copies_take_part_slots(s3_env: dict[str, str], bucket: str) -> None:
    objects = {f"{n}": os.urandom(5 * MIB) for n in range(4)}
    async with open_stores(StorageSettings(max_parts_in_flight=1)) as stores:
        store = await s3_store(stores, bucket)
        infos = await put_objects(store, "s/", objects)
        requests = Requests(store.client)
        async with store.open_upload("out/x.out") as upload:
            for name in objects:
                await upload.append(store, infos[name])
            await upload.commit()
        assert len(requests.of("UploadPartCopy")) == 4 and requests.most_copying == 1
        assert await body_of(store, "out/x.out") == b"".join(objects.values())


async def test_an_object_over_copy_part_bytes_is_copied_in_ranges(
    s3_env: dict[str, str], bucket: str
) -> None:
    big = os.urandom(23 * MIB)
    async with open_stores(StorageSettings(copy_part_bytes=10 * MIB)) as stores:
        store = await s3_store(stores, bucket)
        infos = await put_objects(store, "s/", {"big": big})
        requests = Requests(store.client)
        async with store.open_upload("out/x.out") as upload:
            await upload.write(b"first\n")
            await upload.append(store, infos["big"])
            await upload.commit()
        assert await body_of(store, "out/x.out") == b"first\n" + big
        head = 5 * MIB - 6  # fills the 6 bytes written to a first part of 5 MiB
        half = (23 * MIB - head) // 2  # 18 MiB + 6 in two ranges of at most 10 MiB
        assert requests.copies("s/") == [
            ("big", f"bytes={head}-{head + half - 1}"),
            ("big", f"bytes={head + half}-{23 * MIB - 1}"),
        ]
        assert requests.reads("s/") == [("big", f"bytes=0-{head - 1}")]
        assert upload.bytes_written == 6 + len(big)


async def test_objects_of_another_client_are_streamed(
    s3_env: dict[str, str], bucket: str, objects: dict[str, bytes]
) -> None:
    async with open_stores() as stores, open_stores() as others:
        out, source = await s3_store(stores, bucket), await s3_store(others, bucket)
        infos = await put_objects(source, "s/", objects)
        requests, reading = Requests(out.client), Requests(source.client)
        async with out.open_upload("out/x.out") as upload:
            await fill(upload, "only-big", source, infos)
            await upload.commit()
        assert await body_of(out, "out/x.out") == expected_bytes("only-big", objects)
        assert requests.of("UploadPartCopy") == []
        assert [name for name, _ in reading.reads("s/")] == ["5m", "7m", "5m-b", "7m-b"]


# ----------------------------------------------------------------------------- conditions


async def test_a_copied_output_commits_only_under_its_condition(
    s3_env: dict[str, str], bucket: str
) -> None:
    data = os.urandom(7 * MIB)
    async with open_stores() as stores:
        store = await s3_store(stores, bucket)
        infos = await put_objects(store, "s/", {"7m": data})
        first = await store.put_bytes("out/x.out", b"already here")
        with pytest.raises(PreconditionFailed):
            async with store.open_upload("out/x.out") as upload:
                await upload.append(store, infos["7m"])
                await upload.commit(if_none_match=True)
        assert upload.aborted and await store.list_multipart_uploads("out/") == []
        with pytest.raises(PreconditionFailed):
            async with store.open_upload("out/x.out") as upload:
                await upload.append(store, infos["7m"])
                await upload.commit(if_match='"0123456789abcdef0123456789abcdef"')
        assert await body_of(store, "out/x.out") == b"already here"
        async with store.open_upload("out/x.out") as upload:
            await upload.append(store, infos["7m"])
            await upload.commit(if_match=first)
        assert await body_of(store, "out/x.out") == data
        assert await store.list_multipart_uploads("out/") == []


@pytest.mark.parametrize("how", ["replaced", "deleted"])
@pytest.mark.parametrize("size", [7 * MIB, KIB], ids=["copied", "streamed"])
async def test_a_source_changed_after_its_etag_was_read_is_refused(
    s3_env: dict[str, str], bucket: str, how: str, size: int
) -> None:
    async with open_stores() as stores:
        store = await s3_store(stores, bucket)
        infos = await put_objects(store, "s/", {"a": os.urandom(size), "b": os.urandom(5 * MIB)})
        if how == "replaced":
            await store.put_bytes("s/a", os.urandom(size))
        else:
            await store.delete("s/a")
        requests = Requests(store.client)
        with pytest.raises(ObjectChangedError) as refused:
            async with store.open_upload("out/x.out") as upload:
                await upload.append(store, infos["b"])
                await upload.append(store, infos["a"])
                await upload.commit()
        message = str(refused.value)
        assert f"s3://{bucket}/s/a" in message and f"s3://{bucket}/out/x.out" in message
        assert ("changed" if how == "replaced" else "deleted") in message
        assert infos["a"].etag in message
        assert ("UploadPartCopy" if size > KIB else "GetObject") in [n for n, _ in requests.sent]
        assert await store.head("out/x.out") is None
        assert await store.list_multipart_uploads("out/") == []


async def test_abort_after_copies_leaves_no_open_upload(
    s3_env: dict[str, str], bucket: str, objects: dict[str, bytes]
) -> None:
    async with open_stores() as stores:
        store = await s3_store(stores, bucket)
        infos = await put_objects(store, "s/", objects)
        upload = store.open_upload("out/x.out")
        await fill(upload, "big-after-small", store, infos)
        assert await store.list_multipart_uploads("out/") != []
        await upload.abort()
        assert await store.list_multipart_uploads("out/") == []
        assert await store.head("out/x.out") is None

        class Stop(Exception):
            pass

        with pytest.raises(Stop):
            async with store.open_upload("out/x.out") as upload:
                await fill(upload, "only-big", store, infos)
                raise Stop
        assert await store.list_multipart_uploads("out/") == []


# ----------------------------------------------------------------------------- local


@pytest.mark.parametrize(
    ("output_kind", "source_kind"), [("local", "local"), ("local", "s3"), ("s3", "local")]
)
@pytest.mark.parametrize("case", list(CASES))
async def test_local_and_mixed_outputs_are_the_concatenation(
    s3_env: dict[str, str],
    bucket: str,
    tmp_path: Path,
    objects: dict[str, bytes],
    case: str,
    output_kind: str,
    source_kind: str,
) -> None:
    async with open_stores() as stores:
        s3_side = await s3_store(stores, bucket)
        if source_kind == "s3":
            source: Store = s3_side
            infos = await put_objects(s3_side, "s/", objects)
        else:
            source = stores.local
            infos = write_files(tmp_path / "shards", objects)
        out: Store = s3_side if output_kind == "s3" else stores.local
        key = "out/x.out" if output_kind == "s3" else str(tmp_path / "out" / "x.out")
        requests = Requests(s3_side.client)
        async with out.open_upload(key) as upload:
            await fill(upload, case, source, infos)
            await upload.commit(if_none_match=True)
        expected = expected_bytes(case, objects)
        assert await body_of(out, key) == expected and upload.bytes_written == len(expected)
        assert requests.of("UploadPartCopy") == []
        if output_kind == "local":
            assert os.listdir(tmp_path / "out") == ["x.out"]  # no temporary file left


class CountingLocal:
    """The process's LocalStore, counting the reads asked of it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.reads: list[str] = []

    def uri(self, key: str) -> str:
        return self.store.uri(key)

    def read(self, obj: ObjectInfo, start: int = 0, end: int | None = None) -> Any:
        self.reads.append(os.path.basename(obj.key))
        return self.store.read(obj, start, end)


async def test_local_files_are_copied_by_the_kernel_and_checked(tmp_path: Path) -> None:
    objects = {"small": os.urandom(KIB), "big": os.urandom(3 * MIB), "big2": os.urandom(2 * MIB)}
    infos = write_files(tmp_path / "shards", objects)
    key = str(tmp_path / "out" / "x.out")
    async with open_stores() as stores:
        local = CountingLocal(stores.local)
        async with stores.local.open_upload(key) as upload:
            await upload.write(b"w")
            await upload.append(local, infos["small"])
            await upload.append(local, infos["big"])
            await upload.write(b"between")
            await upload.append(local, infos["big2"])
            await upload.commit(if_none_match=True)
        assert local.reads == ["small"]
        expected = b"w" + objects["small"] + objects["big"] + b"between" + objects["big2"]
        assert Path(key).read_bytes() == expected and upload.bytes_written == len(expected)

        (tmp_path / "shards" / "big").write_bytes(os.urandom(3 * MIB))  # a new version
        with pytest.raises(ObjectChangedError) as refused:
            async with stores.local.open_upload(key) as upload:
                await upload.append(stores.local, infos["big"])
                await upload.commit()
        assert f"file://{infos['big'].key}" in str(refused.value)
        assert f"file://{key}" in str(refused.value)
        for name in ("big2", "small"):  # copied, streamed
            (tmp_path / "shards" / name).unlink()
            with pytest.raises(ObjectChangedError, match=f"file://{key}"):
                async with stores.local.open_upload(key) as upload:
                    await upload.append(stores.local, infos[name])
                    await upload.commit()
        assert Path(key).read_bytes() == expected
        assert sorted(os.listdir(tmp_path / "out")) == ["x.out"]
