"""Hostile inputs to storage and planning: huge instance counts, long names, symlink loops."""

from __future__ import annotations

import json
import logging
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli.app import main
from agent.coordination.identity import IdentityError, resolve_identity
from agent.coordination.plan import format_plan, static_plan
from agent.job.parse import parse_job
from agent.job.schema import JobError
from agent.job.types import DataUri
from agent.storage import InputFile, ObjectInfo, StorageError, StorageSettings
from agent.storage.base import PendingUpload
from agent.storage.local import LocalStore

HUGE = 100_000_000
MIB = 1 << 20


def item(key: str, size: int) -> InputFile:
    return InputFile(DataUri("s3", "b", f"in/{key}"), key, ObjectInfo(f"in/{key}", size, '"e"'))


def job_document(tmp_path: Path, **extra: object) -> dict[str, object]:
    return {
        "TransformJobName": "hostile",
        "TransformInput": {
            "DataSource": {
                "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": str(tmp_path / "in") + "/"}
            }
        },
        "TransformOutput": {"S3OutputPath": str(tmp_path / "out") + "/"},
        **extra,
    }


# ----------------------------------------------------------------------------- defect 8


def test_a_huge_instance_count_is_refused_at_validation_with_its_json_path(
    tmp_path: Path,
) -> None:
    document = job_document(tmp_path, TransformResources={"InstanceCount": HUGE})
    with pytest.raises(JobError) as caught:
        parse_job(document, cwd=str(tmp_path))
    (problem,) = caught.value.problems
    assert problem.path == "$.TransformResources.InstanceCount"
    assert f"{HUGE} is out of range" in problem.message and "1 to 100" in problem.message
    document["TransformResources"] = {"InstanceCount": 100}
    assert parse_job(document, cwd=str(tmp_path)).settings.instance_count == 100


def test_plan_with_a_huge_instance_count_is_a_usage_error_not_a_memory_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No inputs: refused before any listing, so a count that slipped through would not
    # make a plan of that size here (it would exit 1, "no objects found").
    (tmp_path / "in").mkdir()
    job = tmp_path / "job.json"
    job.write_text(json.dumps(job_document(tmp_path)))
    assert main(["plan", "--job", str(job), "--instance-count", str(HUGE)]) == 2
    err = capsys.readouterr().err
    assert f"--instance-count: {HUGE} is out of range; use 1 to 100" in err
    job.write_text(json.dumps(job_document(tmp_path, TransformResources={"InstanceCount": HUGE})))
    assert main(["plan", "--job", str(job)]) == 2
    assert "$.TransformResources.InstanceCount" in capsys.readouterr().err


@pytest.mark.parametrize(
    "env",
    [
        {"AWS_BATCH_JOB_ARRAY_INDEX": "0", "AWS_BATCH_JOB_ARRAY_SIZE": str(HUGE)},
        {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": str(HUGE)},
    ],
    ids=["aws-batch", "slurm"],
)
def test_an_orchestrator_naming_a_huge_count_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(IdentityError, match=f"={HUGE} is more than 100"):
        resolve_identity(env)


def test_a_huge_flag_count_is_refused_by_resolve_identity() -> None:
    with pytest.raises(IdentityError, match=f"{HUGE} instances is more than 100"):
        resolve_identity({"JOB_COMPLETION_INDEX": "3"}, flag_count=HUGE)


def test_a_plan_over_far_more_instances_than_files_grows_with_the_files_only() -> None:
    files = [item("big", 300), item("mid", 200), item("small", 100)]
    tracemalloc.start()
    try:
        plan = static_plan(files, 10**6)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, peak  # a few shares, not a million heap entries and lists
    assert [plan.share(i).files for i in range(3)] == [(f,) for f in files]
    assert (plan.share(3).files, plan.share(999_999).bytes, plan.share(999_999).index) == (
        (),
        0,
        999_999,
    )
    with pytest.raises(IndexError):
        plan.share(10**6)
    lines = format_plan(plan)
    assert lines[0].startswith("3 files, 600 bytes over 1000000 instance(s)")
    assert lines[-1] == "instances 3 to 999999: 0 files, 0 bytes each"
    assert len(lines) == 8


# ----------------------------------------------------------------------------- defect 13a

NAME_244 = "n" * 240 + ".csv"  # 244 characters; its output name, 248, still fits in 255


@pytest.mark.parametrize("size", [10, 3 * MIB], ids=["small", "streamed"])
async def test_an_output_whose_name_fits_is_written_whatever_its_length(
    tmp_path: Path, size: int
) -> None:
    store = LocalStore(StorageSettings())
    key = str(tmp_path / "out" / f"{NAME_244}.out")
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    recorded: list[str | None] = []

    async def record(upload_id: str | None) -> None:
        recorded.append(upload_id)

    async with store.open_upload(key, on_upload_id=record) as upload:
        for start in range(0, size, MIB):
            await upload.write(data[start : start + MIB])
        if size > MIB:  # a temporary file exists now: short, and found by its key
            (temp,) = recorded
            assert temp is not None and len(os.path.basename(temp)) < 64
            assert Path(temp).exists()
            assert await store.list_objects(str(tmp_path / "out")) == []
            assert await store.open_uploads([key]) == [PendingUpload(key, temp)]
            assert await store.open_uploads([key + "x"]) == []
        await upload.commit(if_none_match=True)
    assert Path(key).read_bytes() == data
    assert os.listdir(tmp_path / "out") == [f"{NAME_244}.out"]


async def test_leftover_temporary_files_of_long_names_are_found_and_aborted(
    tmp_path: Path,
) -> None:
    store = LocalStore(StorageSettings())
    key = str(tmp_path / "out" / f"{NAME_244}.out")
    other = str(tmp_path / "out" / "other.csv.out")
    upload = store.open_upload(key)
    await upload.write(b"y" * (2 * MIB))  # a temporary file on disk, as a killed run leaves it
    leftover = upload.upload_id
    assert leftover is not None and Path(leftover).exists()
    legacy = tmp_path / "out" / ".other.csv.out.bt-agent-tmp-00aa11bb22cc"  # the earlier form
    legacy.write_bytes(b"z")
    found = await store.open_uploads([key, other])
    expected = [PendingUpload(key, leftover), PendingUpload(other, str(legacy))]
    assert found == sorted(expected, key=lambda pending: pending.key)
    with pytest.raises(StorageError, match="is not a temporary file of"):
        await store.abort_multipart_upload(other, leftover)
    for pending in found:
        await store.abort_multipart_upload(pending.key, pending.upload_id)
    assert os.listdir(tmp_path / "out") == []
    await upload.abort()


# ----------------------------------------------------------------------------- defect 13b


async def test_symlink_loops_in_an_input_directory_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "in"
    (root / "deep" / "er").mkdir(parents=True)
    (root / "a.csv").write_bytes(b"1\n")
    (root / "deep" / "er" / "b.csv").write_bytes(b"2\n")
    (root / "deep" / "self").symlink_to("self")
    (root / "deep" / "er" / "ping").symlink_to("pong")
    (root / "deep" / "er" / "pong").symlink_to("ping")
    (root / "gone").symlink_to("nowhere")
    (root / "alias.csv").symlink_to("a.csv")
    store = LocalStore(StorageSettings())
    with caplog.at_level(logging.WARNING, logger="agent.storage"):
        found = await store.list_objects(str(root))
    assert [info.key for info in found] == [
        str(root / name) for name in ("a.csv", "alias.csv", "deep/er/b.csv")
    ]
    warned = "\n".join(record.getMessage() for record in caplog.records)
    for name in ("deep/self", "deep/er/ping", "deep/er/pong"):
        assert f"skipping file://{root / name}: a loop of symbolic links" in warned, warned
    assert f"skipping file://{root / 'gone'}: a dangling symbolic link" in warned, warned
    assert len(caplog.records) == 4


async def test_leftovers_under_a_prefix_are_found_without_reading_the_keys_if_none(
    tmp_path: Path,
) -> None:
    store = LocalStore(StorageSettings())
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    read: list[str] = []

    def keys() -> Iterator[str]:
        for name in ("a/x.out", "a/y.out", "z.out"):
            read.append(name)
            yield str(out / name)

    assert await store.open_uploads(keys(), under=str(out)) == []
    assert read == []  # nothing open: not one key was computed
    assert await store.open_uploads(keys(), under=str(tmp_path / "nowhere")) == []
    upload = store.open_upload(str(out / "a" / "y.out"))
    await upload.write(b"y" * (2 * MIB))
    assert upload.upload_id is not None
    found = await store.open_uploads(keys(), under=str(out))
    assert found == [PendingUpload(str(out / "a" / "y.out"), upload.upload_id)]
    await upload.abort()
