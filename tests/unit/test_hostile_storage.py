"""Hostile inputs to storage and planning: huge instance counts, long names, symlink loops."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from agent._jobparse import parse_job
from agent._jobschema import JobError
from agent._jobtypes import DataUri
from agent.cli import main
from agent.plan import IdentityError, format_plan, resolve_identity, static_plan
from agent.storage import InputFile, ObjectInfo

HUGE = 100_000_000


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
