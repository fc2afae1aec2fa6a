"""The model artifacts (README "From SageMaker: the model file"): a model.tar.gz on SeaweedFS
or on disk unpacked into the model directory, cached by ETag, and every hostile archive
refused, naming the member, with nothing written outside the model directory."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.job import DataUri, parse_job
from agent.model.artifacts import (
    MARKER,
    ArtifactError,
    default_model_dir,
    fetch_artifacts,
)
from agent.storage import StorageSettings, open_stores
from tests.support.servers import SeaweedFS

pytestmark = [pytest.mark.integration, pytest.mark.twin_free]

Member = tuple[tarfile.TarInfo, bytes | None]


def regular(name: str, data: bytes, mode: int = 0o644) -> Member:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 1_700_000_000
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3
    return info, None


def archive(*members: Member) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def good_model(version: bytes = b"v1") -> bytes:
    directory = tarfile.TarInfo("code")
    directory.type, directory.mode = tarfile.DIRTYPE, 0o755
    nested = tarfile.TarInfo("code/lib/deep")
    nested.type, nested.mode = tarfile.DIRTYPE, 0o750
    return archive(
        regular("./model.bin", b"weights-" + version),
        (directory, None),
        regular("code/serve.py", b"print('serve')\n", 0o755),
        (nested, None),
        regular("code/lib/deep/table.csv", b"a,b\n1,2\n", 0o600),
        special("code/current", tarfile.SYMTYPE, "lib/deep/table.csv"),
    )


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root``: its kind, mode, and a file's bytes or a link's target."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        rel = str(path.relative_to(root))
        if stat.S_ISLNK(info.st_mode):
            found[rel] = f"link -> {os.readlink(path)}"
        elif stat.S_ISDIR(info.st_mode):
            found[rel] = f"dir {stat.S_IMODE(info.st_mode):o}"
        else:
            found[rel] = f"file {stat.S_IMODE(info.st_mode):o} {path.read_bytes()!r}"
    return found


def put(server: SeaweedFS, bucket: str, key: str, body: bytes) -> DataUri:
    client = server.sync_client()
    try:
        client.put_object(Bucket=bucket, Key=key, Body=body)
    finally:
        client.close()
    return DataUri("s3", bucket, key)


async def fetch(source: DataUri, model_dir: Path, **limits: int) -> Path:
    async with open_stores() as stores:
        return await fetch_artifacts(stores, source, model_dir, **limits)


EXPECTED = {
    "code": "dir 755",
    "code/current": "link -> lib/deep/table.csv",
    "code/lib": "dir 755",  # made on the way, not in the archive
    "code/lib/deep": "dir 750",
    "code/lib/deep/table.csv": "file 600 b'a,b\\n1,2\\n'",
    "code/serve.py": "file 755 b\"print('serve')\\n\"",
    "model.bin": "file 644 b'weights-v1'",
}


async def test_an_archive_on_s3_is_unpacked_with_its_dirs_modes_and_links(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str, tmp_path: Path
) -> None:
    source = put(s3_server, bucket, "models/m1/model.tar.gz", good_model())
    model_dir = tmp_path / "models" / "m1"
    assert await fetch(source, model_dir) == model_dir
    found = tree(model_dir)
    assert found.pop(MARKER).startswith("file")
    assert found == EXPECTED
    assert stat.S_IMODE(model_dir.stat().st_mode) == 0o755
    assert (model_dir / "code" / "current").read_text() == "a,b\n1,2\n"
    # Beside the model directory: only the lock file; no temporary directory is left.
    assert sorted(p.name for p in model_dir.parent.iterdir()) == [".m1.lock", "m1"]


async def test_a_second_fetch_downloads_nothing_and_a_new_etag_downloads_again(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = put(s3_server, bucket, "m/model.tar.gz", good_model(b"v1"))
    model_dir = tmp_path / "m"
    await fetch(source, model_dir)
    # A file put there after the unpack survives only if the second fetch unpacks nothing.
    (model_dir / "sentinel").write_text("kept")
    inode = model_dir.stat().st_ino
    with caplog.at_level(logging.INFO, logger="agent.model"):
        await fetch(source, model_dir)
    assert (model_dir / "sentinel").read_text() == "kept"
    assert model_dir.stat().st_ino == inode
    assert "already unpacked" in caplog.text and "nothing downloaded" in caplog.text
    assert "fetching model artifacts" not in caplog.text

    put(s3_server, bucket, "m/model.tar.gz", good_model(b"v2"))  # a new ETag
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="agent.model"):
        await fetch(source, model_dir)
    assert "fetching model artifacts" in caplog.text
    assert not (model_dir / "sentinel").exists()
    assert (model_dir / "model.bin").read_bytes() == b"weights-v2"


async def test_a_local_archive_is_unpacked_and_cached_by_its_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "artifacts" / "model.tar.gz"
    path.parent.mkdir()
    path.write_bytes(good_model(b"v1"))
    source = DataUri("file", "", str(path))
    model_dir = tmp_path / "work" / "bt-agent-models" / "m"
    await fetch(source, model_dir)
    found = tree(model_dir)
    found.pop(MARKER)
    assert found == EXPECTED
    (model_dir / "sentinel").write_text("kept")
    with caplog.at_level(logging.INFO, logger="agent.model"):
        await fetch(source, model_dir)
    assert (model_dir / "sentinel").exists() and "nothing downloaded" in caplog.text
    path.write_bytes(good_model(b"v2-longer"))
    await fetch(source, model_dir)
    assert (model_dir / "model.bin").read_bytes() == b"weights-v2-longer"
    assert not (model_dir / "sentinel").exists()


async def test_a_large_archive_streams_through_small_chunks_and_ranges(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str, tmp_path: Path
) -> None:
    # Incompressible members, read 30,001 bytes at a time in ranged GETs of 100,000: the
    # tar reader asks for less than a chunk (its 10,240-byte records), so a chunk is
    # served in pieces that never line up with it, and the object takes many GETs.
    blobs = {f"shard-{i}.bin": os.urandom(150_000 + i) for i in range(8)}
    body = archive(*(regular(name, data) for name, data in blobs.items()))
    source = put(s3_server, bucket, "big/model.tar.gz", body)
    settings = StorageSettings(
        read_chunk_bytes=30_001, read_ahead_bytes=60_002, range_bytes=100_000
    )
    model_dir = tmp_path / "big"
    async with open_stores(settings) as stores:
        await fetch_artifacts(stores, source, model_dir)
    for name, data in blobs.items():
        assert (model_dir / name).read_bytes() == data


async def test_a_fetch_cancelled_midway_leaves_the_old_directory_and_no_temporary(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str, tmp_path: Path
) -> None:
    model_dir = tmp_path / "m"
    await fetch(put(s3_server, bucket, "v1/model.tar.gz", good_model()), model_dir)
    before = tree(tmp_path)
    blobs = [os.urandom(100_000) for _ in range(40)]  # 4 MB in 100,000-byte GETs
    body = archive(*(regular(f"shard-{i}.bin", data) for i, data in enumerate(blobs)))
    source = put(s3_server, bucket, "v2/model.tar.gz", body)
    settings = StorageSettings(
        read_chunk_bytes=20_000, read_ahead_bytes=20_000, range_bytes=100_000
    )
    async with open_stores(settings) as stores:
        task = asyncio.create_task(fetch_artifacts(stores, source, model_dir))
        while not list(tmp_path.glob(".m.tmp-*")) and not task.done():
            await asyncio.sleep(0)
        assert not task.done()  # cancelled while the archive is being unpacked
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert tree(tmp_path) == before
    await fetch(source, model_dir)  # and the next fetch works
    assert (model_dir / "shard-39.bin").read_bytes() == blobs[39]


HOSTILE: dict[str, tuple[Callable[[], bytes], str]] = {
    "absolute path": (
        lambda: archive(regular("ok.txt", b"x"), regular("/tmp/bt-agent-abs.txt", b"pwned")),
        '"/tmp/bt-agent-abs.txt" with an absolute path',
    ),
    "dot-dot": (
        lambda: archive(regular("ok.txt", b"x"), regular("../escaped.txt", b"pwned")),
        "\"../escaped.txt\", whose path has a '..' component",
    ),
    "dot-dot inside": (
        lambda: archive(regular("a/../../escaped.txt", b"pwned")),
        "\"a/../../escaped.txt\", whose path has a '..' component",
    ),
    "symlink to /etc/passwd": (
        lambda: archive(special("passwd", tarfile.SYMTYPE, "/etc/passwd")),
        'the symbolic link "passwd" to "/etc/passwd", which leads outside',
    ),
    "symlink up and out": (
        lambda: archive(special("sub/evil", tarfile.SYMTYPE, "../../x")),
        'the symbolic link "sub/evil" to "../../x", which leads outside',
    ),
    "symlinks through symlinks": (
        lambda: archive(special("b", tarfile.SYMTYPE, "a/.."), special("a", tarfile.SYMTYPE, ".")),
        'the symbolic link "b" to "a/..", which leads outside',
    ),
    "a file through a symlink": (
        lambda: archive(
            special("d", tarfile.SYMTYPE, "inner"),
            regular("inner/keep", b"x"),
            regular("d/x", b"pwned"),
        ),
        '"d/x", whose path goes through a symbolic link',
    ),
    "hard link": (
        lambda: archive(regular("a", b"x"), special("b", tarfile.LNKTYPE, "a")),
        '"b", a hard link to "a"',
    ),
    "hard link outside": (
        lambda: archive(special("shadow", tarfile.LNKTYPE, "/etc/shadow")),
        '"shadow", a hard link to "/etc/shadow"',
    ),
    "character device": (
        lambda: archive(special("null", tarfile.CHRTYPE)),
        '"null", a character device',
    ),
    "block device": (
        lambda: archive(special("sda", tarfile.BLKTYPE)),
        '"sda", a block device',
    ),
    "fifo": (
        lambda: archive(special("pipe", tarfile.FIFOTYPE)),
        '"pipe", a FIFO (named pipe)',
    ),
    "the marker's name": (
        lambda: archive(regular(MARKER, b'{"etag": "forged"}')),
        f'"{MARKER}", the name bt-agent keeps its own cache marker under',
    ),
    "not a tar.gz": (
        lambda: b"PK\x03\x04 this is a zip file, not a tar.gz" * 10,
        "is not a valid tar.gz",
    ),
    "a truncated archive": (
        lambda: archive(regular("big.bin", os.urandom(200_000)))[:100_000],
        "is not a valid tar.gz",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_a_hostile_archive_is_refused_and_nothing_is_written_outside(
    case: str, s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str, tmp_path: Path
) -> None:
    model_dir = tmp_path / "work" / "models" / "m"
    await fetch(put(s3_server, bucket, "good/model.tar.gz", good_model()), model_dir)
    before = tree(tmp_path)
    build, words = HOSTILE[case]
    source = put(s3_server, bucket, "bad/model.tar.gz", build())
    with pytest.raises(ArtifactError) as caught:
        await fetch(source, model_dir)
    message = str(caught.value)
    assert words in message
    assert f"s3://{bucket}/bad/model.tar.gz" in message  # the archive is named too
    assert tree(tmp_path) == before  # the old model directory intact, nothing else written
    assert not Path("/tmp/bt-agent-abs.txt").exists()


async def test_the_bounds_on_bytes_and_members_name_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "model.tar.gz"
    path.write_bytes(archive(*(regular(f"f{i}", b"x" * 100) for i in range(5))))
    source = DataUri("file", "", str(path))
    with pytest.raises(ArtifactError, match=r"more than 4 members, the most bt-agent unpacks"):
        await fetch(source, tmp_path / "a", max_members=4)
    with pytest.raises(ArtifactError, match=r"more than 450 bytes \(at member \"f4\"\)"):
        await fetch(source, tmp_path / "b", max_bytes=450)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.lock", ".b.lock", "model.tar.gz"]
    await fetch(source, tmp_path / "c", max_members=5, max_bytes=500)
    assert len(list((tmp_path / "c").iterdir())) == 6  # five files and the marker


async def test_a_missing_archive_and_a_foreign_directory_are_refused(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str, tmp_path: Path
) -> None:
    with pytest.raises(ArtifactError, match=rf"s3://{bucket}/none/model.tar.gz do not exist"):
        await fetch(DataUri("s3", bucket, "none/model.tar.gz"), tmp_path / "m")
    source = put(s3_server, bucket, "m/model.tar.gz", good_model())
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own")
    with pytest.raises(ArtifactError, match="holds files that bt-agent did not unpack"):
        await fetch(source, mine)
    assert tree(mine) == {"notes.txt": "file 644 b'my own'"}
    empty = tmp_path / "empty"
    empty.mkdir()
    await fetch(source, empty)
    assert (empty / "model.bin").exists()


def test_the_default_model_dir_is_named_after_the_model() -> None:
    document = {
        "TransformJobName": "j",
        "ModelName": "from-the-job",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/in/"}}
        },
        "TransformOutput": {"S3OutputPath": "s3://b/out/"},
    }
    job = parse_job(document, cwd="/w").settings
    assert default_model_dir(job, None, "/w") == Path("/w/bt-agent-models/from-the-job")
    document["Agent"] = {"ModelDir": "models/here"}
    job = parse_job(document, cwd="/w").settings
    assert default_model_dir(job, None, "/w") == Path("/w/models/here")
