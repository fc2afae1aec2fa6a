"""The local store, the input and output naming rules, manifests and streaming gunzip."""

from __future__ import annotations

import asyncio
import gzip
import os
import zlib
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import orjson
import pytest

from agent.codec.gzip import Gunzip, GzipError, gunzip
from agent.job import DataUri
from agent.storage import (
    MAX_PARTS,
    ChunkReader,
    InputError,
    LocalStore,
    ManifestError,
    ObjectChangedError,
    ObjectInfo,
    OutputKeyError,
    PreconditionFailed,
    StorageError,
    StorageSettings,
    exclusions,
    list_inputs,
    open_stores,
    output_uri,
    parse_manifest,
    part_size,
    relative_key,
)

SMALL = StorageSettings(read_chunk_bytes=1000, read_ahead_bytes=3000)
# Small files are read and written on the event loop (``local_inline_bytes``); the same
# tests run with every file call in a worker thread.
ON_THE_LOOP_OR_THREADS = pytest.mark.parametrize(
    "settings",
    [SMALL, StorageSettings(read_chunk_bytes=1000, read_ahead_bytes=3000, local_inline_bytes=0)],
    ids=["inline", "threads"],
)


def local(path: Path | str) -> DataUri:
    return DataUri("file", "", str(path))


def write(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


async def read_all(
    store: LocalStore, obj: ObjectInfo, start: int = 0, end: int | None = None
) -> bytes:
    async with store.read(obj, start, end) as chunks:
        return b"".join([chunk async for chunk in chunks])


# ----------------------------------------------------------------------------- naming rules


@pytest.mark.parametrize(
    ("key", "prefix", "expected"),
    [
        ("in/a/x.csv", "in/", "a/x.csv"),
        ("in/a/x.csv", "in", "in/a/x.csv"),
        ("in/a/x.csv", "in/a", "a/x.csv"),
        ("in/part-1.csv", "in/part", "part-1.csv"),
        ("x.csv", "", "x.csv"),
    ],
)
def test_relative_key_is_relative_to_the_prefix_directory(
    key: str, prefix: str, expected: str
) -> None:
    assert relative_key(key, prefix) == expected


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (DataUri("s3", "b", "out"), "out/a/x.csv.out"),
        (DataUri("s3", "b", "out/"), "out/a/x.csv.out"),
        (DataUri("s3", "b", "out//"), "out/a/x.csv.out"),
        (DataUri("s3", "b", ""), "a/x.csv.out"),
        (local("/data/out"), "/data/out/a/x.csv.out"),
        (local("/data/out/"), "/data/out/a/x.csv.out"),
    ],
)
def test_output_uri_joins_with_exactly_one_slash(output: DataUri, expected: str) -> None:
    uri = output_uri("a/x.csv", output)
    assert (uri.scheme, uri.bucket, uri.key) == (output.scheme, output.bucket, expected)


def test_output_uri_keeps_s3_keys_verbatim() -> None:
    assert output_uri("../x", DataUri("s3", "b", "out")).key == "out/../x.out"
    assert output_uri("/x", DataUri("s3", "b", "out/")).key == "out//x.out"


@pytest.mark.parametrize("relative", ["../x.csv", "a/../../x.csv", "../out-other/x"])
def test_output_uri_refuses_to_escape_a_local_directory(relative: str) -> None:
    with pytest.raises(OutputKeyError, match="outside the output directory /data/out/"):
        output_uri(relative, local("/data/out"))


def test_output_uri_keeps_odd_local_keys_inside() -> None:
    assert output_uri("/etc/passwd", local("/data/out")).key == "/data/out/etc/passwd.out"
    assert output_uri("a/../b", local("/data/out/")).key == "/data/out/b.out"


def test_exclusions_name_same_bucket_prefixes_with_one_slash() -> None:
    inputs = DataUri("s3", "b", "data")
    others = [
        DataUri("s3", "b", "data/out"),
        DataUri("s3", "b", "data/_bt-agent/job/"),
        DataUri("s3", "other", "data/out"),
        DataUri("file", "", "/data/out"),
    ]
    assert exclusions(inputs, others) == ("data/out/", "data/_bt-agent/job/")


def test_part_size_doubles_every_thousand_parts_and_fits_ten_thousand() -> None:
    settings = StorageSettings()
    mib = 1 << 20
    assert [part_size(settings, n) for n in (1, 1000, 1001, 2001, 9001)] == [
        8 * mib,
        8 * mib,
        16 * mib,
        32 * mib,
        4096 * mib,
    ]
    total = sum(part_size(settings, n) for n in range(1, MAX_PARTS + 1))
    assert total > 5 * (1 << 40)  # more than S3's largest object
    assert part_size(StorageSettings(part_size_bytes=64 * mib), MAX_PARTS) == 5 << 30


@pytest.mark.parametrize(
    "bad",
    [{"part_size_bytes": 1 << 20}, {"read_chunk_bytes": 0}, {"max_parts_in_flight": 0}],
)
def test_settings_refuse_values_s3_or_the_reader_cannot_use(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must be"):
        StorageSettings(**bad)


async def test_chunk_reader_reads_ahead_a_bounded_number_of_bytes() -> None:
    produced = consumed = most_ahead = 0

    async def produce() -> AsyncGenerator[bytes, None]:
        nonlocal produced
        for size in [700, 1000, 300, 2500, 10, 1000] * 20:
            produced += size
            yield b"x" * size

    async with ChunkReader(produce, 3000) as chunks:
        async for chunk in chunks:
            await asyncio.sleep(0.001)  # a slow consumer: the reader gets ahead, up to its bound
            consumed += len(chunk)
            most_ahead = max(most_ahead, produced - consumed)
    assert consumed == produced == 5510 * 20
    assert 3000 <= most_ahead < 3000 + 2500  # the bound, plus at most one chunk


async def test_chunk_reader_without_read_ahead_runs_no_task() -> None:
    async def produce() -> AsyncGenerator[bytes, None]:
        yield b"ab"
        raise StorageError("broken after two bytes")

    tasks = len(asyncio.all_tasks())
    reader = ChunkReader(produce, 0)
    assert await anext(reader) == b"ab"
    assert len(asyncio.all_tasks()) == tasks
    with pytest.raises(StorageError, match="broken after two bytes"):
        await anext(reader)
    with pytest.raises(StopAsyncIteration):
        await anext(reader)
    await reader.aclose()


# ----------------------------------------------------------------------------- listing


async def test_directory_lists_files_recursively_sorted(tmp_path: Path) -> None:
    for name in ("b.csv", "a/z.csv", "a/y/x.csv", "empty.csv"):
        write(tmp_path / "in" / name, b"" if name == "empty.csv" else b"data")
    write(tmp_path / "in" / "a" / ".x.csv.bt-agent-tmp-0123456789ab")
    write(tmp_path / "inbox" / "not-me.csv")
    store = LocalStore(SMALL)
    for prefix in (str(tmp_path / "in"), str(tmp_path / "in") + "/"):
        found = await store.list_objects(prefix)
        assert [o.key for o in found] == [
            str(tmp_path / "in" / name) for name in ("a/y/x.csv", "a/z.csv", "b.csv", "empty.csv")
        ]
    info = found[0]
    stat = os.stat(info.key)
    assert (info.size, info.etag) == (4, f"4-{stat.st_mtime_ns}")


async def test_non_directory_prefix_matches_paths_starting_with_it(tmp_path: Path) -> None:
    for name in ("part-1.csv", "part-2/x.csv", "partial.csv", "other.csv", "sub/part-9.csv"):
        write(tmp_path / name)
    found = await LocalStore(SMALL).list_objects(str(tmp_path / "part"))
    assert [o.key for o in found] == [
        str(tmp_path / name) for name in ("part-1.csv", "part-2/x.csv", "partial.csv")
    ]
    assert await LocalStore(SMALL).list_objects(str(tmp_path / "nowhere" / "x")) == []


async def test_list_inputs_excludes_output_and_state_under_the_input(tmp_path: Path) -> None:
    write(tmp_path / "in" / "a.csv")
    write(tmp_path / "in" / "sub" / "b.csv")
    write(tmp_path / "in" / "out" / "a.csv.out")
    write(tmp_path / "in" / "out" / "_bt-agent" / "job" / "listing.json")
    async with open_stores(SMALL) as stores:
        files = await list_inputs(
            stores, "S3Prefix", local(tmp_path / "in"), exclude=[local(tmp_path / "in" / "out")]
        )
    assert [f.relative_key for f in files] == ["a.csv", "sub/b.csv"]
    assert files[1].uri == local(tmp_path / "in" / "sub" / "b.csv")
    assert files[1].info is not None
    assert output_uri(files[1].relative_key, local(tmp_path / "out")).key == str(
        tmp_path / "out" / "sub" / "b.csv.out"
    )


# ----------------------------------------------------------------------------- reads


@ON_THE_LOOP_OR_THREADS
async def test_read_streams_bounded_chunks_and_ranges(
    tmp_path: Path, settings: StorageSettings
) -> None:
    data = os.urandom(10_500)
    path = write(tmp_path / "x.bin", data)
    store = LocalStore(settings)
    (obj,) = await store.list_objects(str(path))
    async with store.read(obj) as chunks:
        sizes = [len(chunk) async for chunk in chunks]
    assert sizes == [1000] * 10 + [500]
    assert await read_all(store, obj) == data
    assert await read_all(store, obj, 999, 2001) == data[999:2001]
    assert await read_all(store, obj, 10_500) == b""


@ON_THE_LOOP_OR_THREADS
async def test_read_stops_early_without_leaking(tmp_path: Path, settings: StorageSettings) -> None:
    path = write(tmp_path / "x.bin", os.urandom(50_000))
    store = LocalStore(settings)
    obj = await store.head(str(path))
    assert obj is not None
    async with store.read(obj) as chunks:
        async for _ in chunks:
            break
    await asyncio.sleep(0)  # an unclosed file would warn (warnings are errors here)


@ON_THE_LOOP_OR_THREADS
async def test_read_fails_when_the_file_changes_or_vanishes(
    tmp_path: Path, settings: StorageSettings
) -> None:
    path = write(tmp_path / "x.bin", os.urandom(20_000))
    store = LocalStore(settings)
    obj = await store.head(str(path))
    assert obj is not None
    with pytest.raises(ObjectChangedError, match="changed while it was being read"):
        async with store.read(obj) as chunks:
            async for _ in chunks:
                os.utime(path, ns=(1, 1))
    path.unlink()
    with pytest.raises(ObjectChangedError, match="no longer exists"):
        await read_all(store, obj)


# ----------------------------------------------------------------------------- uploads


@ON_THE_LOOP_OR_THREADS
async def test_upload_writes_a_temp_file_and_renames_it_on_commit(
    tmp_path: Path, settings: StorageSettings
) -> None:
    target = tmp_path / "out" / "deep" / "x.csv.out"
    seen: list[str] = []

    async def record(upload_id: str) -> None:
        seen.append(upload_id)

    store = LocalStore(settings)
    async with store.open_upload(str(target), on_upload_id=record) as upload:
        await upload.write(b"abc")
        await upload.write(memoryview(b"x" * (2 << 20)))
        await upload.write(bytearray(b"def"))
        assert not target.exists()
        assert seen == [upload.upload_id] and Path(seen[0]).exists()
        etag = await upload.commit()
    assert target.read_bytes() == b"abc" + b"x" * (2 << 20) + b"def"
    assert etag == f"{target.stat().st_size}-{target.stat().st_mtime_ns}"
    assert os.listdir(target.parent) == ["x.csv.out"]


@ON_THE_LOOP_OR_THREADS
async def test_small_output_creates_its_directories(
    tmp_path: Path, settings: StorageSettings
) -> None:
    store = LocalStore(settings)
    key = tmp_path / "new" / "deep" / "x.csv.out"
    etag = await store.put_bytes(str(key), b"1\n")
    assert key.read_bytes() == b"1\n" and os.listdir(key.parent) == ["x.csv.out"]
    assert etag == f"2-{key.stat().st_mtime_ns}"
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageError, match=f"cannot write file://{tmp_path}/file/x.out: "):
        await store.put_bytes(str(tmp_path / "file" / "x.out"), b"1\n")


@ON_THE_LOOP_OR_THREADS
async def test_upload_is_aborted_on_error_or_without_commit(
    tmp_path: Path, settings: StorageSettings
) -> None:
    store = LocalStore(settings)
    target = tmp_path / "x.out"
    with pytest.raises(RuntimeError):
        async with store.open_upload(str(target)) as upload:
            await upload.write(b"partial")
            raise RuntimeError("model failed")
    async with store.open_upload(str(target)) as upload:
        await upload.write(b"forgotten")
    assert os.listdir(tmp_path) == []
    assert upload.aborted


@ON_THE_LOOP_OR_THREADS
async def test_conditional_commits(tmp_path: Path, settings: StorageSettings) -> None:
    store = LocalStore(settings)
    key = str(tmp_path / "x.out")
    first = await store.put_bytes(key, b"one", if_none_match=True)
    with pytest.raises(PreconditionFailed, match="already exists"):
        await store.put_bytes(key, b"two", if_none_match=True)
    with pytest.raises(PreconditionFailed, match="not replaced"):
        await store.put_bytes(key, b"two", if_match="3-0")
    assert await store.get_bytes(key) == (b"one", first)
    second = await store.put_bytes(key, b"three", if_match=first)
    assert await store.get_bytes(key) == (b"three", second)
    assert os.listdir(tmp_path) == ["x.out"]
    await store.delete(key)
    await store.delete(key)
    assert await store.get_bytes(key) is None and await store.head(key) is None


async def test_leftover_temp_files_are_listed_and_aborted(tmp_path: Path) -> None:
    store = LocalStore(SMALL)
    leftover = write(tmp_path / "out" / "a" / ".x.csv.out.bt-agent-tmp-00aa11bb22cc")
    write(tmp_path / "out" / "a" / "y.csv.out")
    (pending,) = await store.open_uploads([str(tmp_path / "out/a/x.csv.out")])
    assert (pending.key, pending.upload_id) == (str(tmp_path / "out/a/x.csv.out"), str(leftover))
    with pytest.raises(StorageError, match="is not a temporary file of"):
        await store.abort_multipart_upload(str(tmp_path / "out/a/x.csv.out"), str(tmp_path))
    await store.abort_multipart_upload(pending.key, pending.upload_id)
    assert not leftover.exists()


# ----------------------------------------------------------------------------- manifests


def manifest(*elements: object) -> bytes:
    return orjson.dumps(list(elements))


def test_manifest_gives_prefix_and_keys() -> None:
    where = DataUri("s3", "b", "m.json")
    prefix, keys = parse_manifest(manifest({"prefix": "s3://data/in/"}, "a.csv", "x/b.csv"), where)
    assert (prefix, keys) == (DataUri("s3", "data", "in/"), ["a.csv", "x/b.csv"])
    local_where = local("/jobs/m.json")
    prefix, _ = parse_manifest(manifest({"prefix": "in/"}, "a"), local_where)
    assert prefix == local("/jobs/in/")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"[{", "not valid JSON"),
        (b"{}", "must be a JSON array"),
        (b"[]", "must be a JSON array"),
        (manifest("s3://b/in/", "a"), 'element 0 must be {"prefix"'),
        (manifest({"prefix": "s3://b/", "x": 1}, "a"), "element 0 must be"),
        (manifest({"prefix": "/local/in/"}, "a"), "element 0: an S3 manifest needs an s3://"),
        (manifest({"prefix": "s3:///in/"}, "a"), "element 0: the prefix is not usable"),
        (
            manifest({"prefix": "s3://b/"}, "a", 3, ""),
            "element 2 must be a non-empty key.*element 3",
        ),
        (manifest({"prefix": "s3://b/"}, "a", "b", "a"), r"element 3 repeats element 1 \('a'\)"),
    ],
)
def test_malformed_manifests_name_the_element(data: bytes, message: str) -> None:
    with pytest.raises(ManifestError, match=message) as caught:
        parse_manifest(data, DataUri("s3", "b", "m.json"))
    assert str(caught.value).startswith("the manifest s3://b/m.json is not usable: ")
    assert isinstance(caught.value, InputError)


async def test_local_manifest_reports_missing_entries(tmp_path: Path) -> None:
    write(tmp_path / "in" / "a.csv", b"aaa")
    write(tmp_path / "in" / "x" / "b.csv", b"bb")
    path = write(
        tmp_path / "m.json",
        manifest({"prefix": f"file://{tmp_path}/in/"}, "x/b.csv", "gone.csv", "a.csv"),
    )
    async with open_stores(SMALL) as stores:
        files = await list_inputs(stores, "ManifestFile", local(path))
        with pytest.raises(InputError, match="does not exist"):
            await list_inputs(stores, "ManifestFile", local(tmp_path / "nope.json"))
    assert [(f.relative_key, f.manifest_index, f.info is None) for f in files] == [
        ("x/b.csv", 1, False),
        ("gone.csv", 2, True),
        ("a.csv", 3, False),
    ]
    assert files[0].info is not None and files[0].info.size == 2
    assert files[1].missing_message().startswith(f"file://{tmp_path}/in/gone.csv does not exist")


# ----------------------------------------------------------------------------- gzip


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def gunzip_all(data: bytes, size: int = 7, out_chunk_bytes: int = 1 << 20) -> bytes:
    return b"".join([part async for part in gunzip(chunked(data, size), out_chunk_bytes)])


async def test_gunzip_concatenated_members_in_any_chunking() -> None:
    body = gzip.compress(b"first line\n") + b"\0\0" + gzip.compress(b"") + gzip.compress(b"end")
    for size in (1, 3, 7, len(body)):
        assert await gunzip_all(body, size) == b"first line\nend"


async def test_gunzip_zero_byte_object_gives_nothing() -> None:
    assert [part async for part in gunzip(chunked(b"", 1))] == []


async def test_gunzip_bounds_each_output_chunk() -> None:
    bomb = gzip.compress(b"\0" * (5 << 20))
    sizes = [len(part) async for part in gunzip(chunked(bomb, 1 << 16), 1 << 20)]
    assert sum(sizes) == 5 << 20 and max(sizes) <= 1 << 20


async def test_gunzip_corrupt_input_names_the_compressed_offset() -> None:
    good = gzip.compress(b"hello" * 100)
    with pytest.raises(GzipError, match=f"near compressed byte {len(good)}") as caught:
        await gunzip_all(good + b"garbage!", 5)
    assert caught.value.offset == len(good)
    assert caught.value.in_file("s3://b/x.gz").startswith(
        "s3://b/x.gz: the input is not valid gzip"
    )
    with pytest.raises(GzipError, match="near compressed byte 0"):
        await gunzip_all(b"plain,csv\n")


def test_gunzip_truncated_member_is_an_error() -> None:
    data = gzip.compress(os.urandom(5000))
    inflater = Gunzip()
    assert len(b"".join(inflater.feed(data[:-4]))) == 5000
    with pytest.raises(GzipError, match="truncated: it ends at compressed byte"):
        inflater.finish()
    raw = zlib.compress(b"zlib, not gzip")
    with pytest.raises(GzipError):
        list(Gunzip().feed(raw))
