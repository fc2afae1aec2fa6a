"""Identity from flags and orchestrator variables; the static plan (docs/design.md §4.1, §4.3)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from agent.cli.app import main
from agent.coordination.identity import IdentityError, resolve_identity
from agent.coordination.plan import format_plan, largest_first, static_plan
from agent.job.types import DataUri
from agent.storage import InputFile, ObjectInfo


def item(key: str, size: int | None) -> InputFile:
    info = None if size is None else ObjectInfo(f"in/{key}", size, f'"{key}"')
    return InputFile(DataUri("s3", "b", f"in/{key}"), key, info)


# ---------------------------------------------------------------------- identity: flags


def test_flags_win_over_every_variable() -> None:
    env = {
        "JOB_COMPLETION_INDEX": "1",
        "AWS_BATCH_JOB_ARRAY_INDEX": "2",
        "SLURM_ARRAY_TASK_ID": "3",
    }
    who = resolve_identity(env, flag_index=0, flag_count=4, job_count=2)
    assert (who.index, who.count, who.source) == (0, 4, "--instance-index")
    assert who.warning is not None and "planned over 4" in who.warning


def test_flag_index_takes_the_job_count() -> None:
    who = resolve_identity({}, flag_index=2, job_count=3)
    assert (who.index, who.count, who.warning) == (2, 3, None)
    assert str(who) == "instance 2 of 3 (from --instance-index)"


def test_flag_index_out_of_range() -> None:
    with pytest.raises(IdentityError, match="out of range for 3 instance"):
        resolve_identity({}, flag_index=3, job_count=3)


def test_flag_count_alone_keeps_the_orchestrator_index() -> None:
    who = resolve_identity({"JOB_COMPLETION_INDEX": "4"}, flag_count=5, job_count=1)
    assert (who.index, who.count) == (4, 5)


# ---------------------------------------------------------------------- identity: Kubernetes


def test_kubernetes_indexed_job_takes_the_count_from_the_job() -> None:
    who = resolve_identity({"JOB_COMPLETION_INDEX": "2"}, job_count=3)
    assert (who.index, who.count, who.warning) == (2, 3, None)
    assert "Kubernetes" in who.source


def test_kubernetes_index_beyond_the_job_count() -> None:
    with pytest.raises(IdentityError, match="JOB_COMPLETION_INDEX"):
        resolve_identity({"JOB_COMPLETION_INDEX": "3"}, job_count=3)


@pytest.mark.parametrize("value", ["x", "1.5", "-1"])
def test_kubernetes_malformed_index(value: str) -> None:
    with pytest.raises(IdentityError, match="JOB_COMPLETION_INDEX"):
        resolve_identity({"JOB_COMPLETION_INDEX": value}, job_count=3)


def test_blank_variables_count_as_unset() -> None:
    who = resolve_identity({"JOB_COMPLETION_INDEX": " "}, job_count=1)
    assert (who.index, who.count) == (0, 1)


# ---------------------------------------------------------------------- identity: AWS Batch


def test_aws_batch_with_array_size() -> None:
    env = {"AWS_BATCH_JOB_ARRAY_INDEX": "5", "AWS_BATCH_JOB_ARRAY_SIZE": "6"}
    who = resolve_identity(env, job_count=6)
    assert (who.index, who.count, who.warning) == (5, 6, None)
    assert "AWS Batch" in who.source


def test_aws_batch_without_size_uses_the_job_count() -> None:
    who = resolve_identity({"AWS_BATCH_JOB_ARRAY_INDEX": "1"}, job_count=2)
    assert (who.index, who.count) == (1, 2)


def test_aws_batch_size_differs_from_the_job_warns() -> None:
    env = {"AWS_BATCH_JOB_ARRAY_INDEX": "0", "AWS_BATCH_JOB_ARRAY_SIZE": "4"}
    who = resolve_identity(env, job_count=2)
    assert who.count == 4
    assert who.warning is not None and "InstanceCount is 2" in who.warning


def test_aws_batch_bad_size() -> None:
    env = {"AWS_BATCH_JOB_ARRAY_INDEX": "0", "AWS_BATCH_JOB_ARRAY_SIZE": "0"}
    with pytest.raises(IdentityError, match="AWS_BATCH_JOB_ARRAY_SIZE=0 must be 1 or more"):
        resolve_identity(env, job_count=2)


# ---------------------------------------------------------------------- identity: Slurm


def test_slurm_zero_based_array() -> None:
    env = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "0"}
    who = resolve_identity(env, job_count=3)
    assert (who.index, who.count) == (2, 3)
    assert "Slurm" in who.source


def test_slurm_array_starting_at_one() -> None:
    env = {"SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "1"}
    assert resolve_identity(env, job_count=8).index == 7


def test_slurm_array_with_a_step() -> None:
    env = {
        "SLURM_ARRAY_TASK_ID": "12",
        "SLURM_ARRAY_TASK_COUNT": "4",
        "SLURM_ARRAY_TASK_MIN": "0",
        "SLURM_ARRAY_TASK_STEP": "4",
    }
    assert resolve_identity(env, job_count=4).index == 3


def test_slurm_id_off_the_step_asks_for_the_flag() -> None:
    env = {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_STEP": "2"}
    with pytest.raises(IdentityError, match="--instance-index"):
        resolve_identity(env, job_count=4)


def test_slurm_without_count_uses_the_job() -> None:
    who = resolve_identity({"SLURM_ARRAY_TASK_ID": "1"}, job_count=2)
    assert (who.index, who.count) == (1, 2)


# ---------------------------------------------------------------------- identity: none


def test_no_identity_runs_everything_and_warns_when_the_job_wants_more() -> None:
    who = resolve_identity({}, job_count=3)
    assert (who.index, who.count) == (0, 1)
    assert who.warning is not None and "InstanceCount 3" in who.warning
    assert resolve_identity({}, job_count=1).warning is None


def test_precedence_between_orchestrators() -> None:
    env = {
        "AWS_BATCH_JOB_ARRAY_INDEX": "1",
        "SLURM_ARRAY_TASK_ID": "0",
        "JOB_COMPLETION_INDEX": "2",
    }
    assert resolve_identity(env, job_count=3).index == 2
    del env["JOB_COMPLETION_INDEX"]
    assert resolve_identity(env, job_count=3).index == 1


# ---------------------------------------------------------------------- static plan


def test_lpt_balances_skewed_sizes() -> None:
    files = [item(f"f{n:02d}", size) for n, size in enumerate([100, 70, 60, 50, 40, 30, 20, 10])]
    plan = static_plan(files, 3)
    assert [share.bytes for share in plan.shares] == [130, 130, 120]
    assert plan.total_bytes == 380
    assert plan.imbalance == pytest.approx(130 / (380 / 3))
    assert [f.relative_key for f in plan.share(0).files] == ["f00", "f05"]  # largest first


def test_plan_is_deterministic_whatever_the_listing_order() -> None:
    rng = random.Random(7)
    files = [item(f"k{n:03d}", rng.choice([1, 5, 5, 1000, 2**20])) for n in range(200)]
    reference = static_plan(files, 4)
    for _ in range(5):
        rng.shuffle(files)
        assert static_plan(files, 4) == reference
    every = [f for share in reference.shares for f in share.files]
    assert sorted(str(f.uri) for f in every) == sorted(str(f.uri) for f in files)
    assert reference.imbalance < 1.01


def test_ties_are_broken_by_key_and_empty_files_spread() -> None:
    files = [item(name, 0) for name in ("c", "a", "b", "d")]
    plan = static_plan(files, 2)
    assert [[f.relative_key for f in s.files] for s in plan.shares] == [["a", "c"], ["b", "d"]]
    assert plan.imbalance == 1.0
    assert [f.relative_key for f in largest_first([item("b", 1), item("a", 1), item("z", 2)])] == [
        "z",
        "a",
        "b",
    ]


def test_more_instances_than_files() -> None:
    plan = static_plan([item("only", 10), item("missing", None)], 3)
    assert [len(plan.share(index).files) for index in range(3)] == [1, 1, 0]
    assert plan.imbalance == pytest.approx(10 / (10 / 3))
    with pytest.raises(ValueError, match="1 or more"):
        static_plan([], 0)


def test_format_plan_marks_completed_files() -> None:
    files = [item("big", 300), item("small", 100), item("mid", 200)]
    lines = format_plan(static_plan(files, 2), done=frozenset({"s3://b/in/small"}))
    assert lines[0] == (
        "3 files, 600 bytes over 2 instance(s); expected imbalance 1.000 "
        "(largest share / mean share, by bytes)"
    )
    assert lines[1] == "instance 0: 1 files, 300 bytes"
    assert lines[3] == "instance 1: 2 files, 300 bytes, 1 already completed"
    assert lines[5].endswith("s3://b/in/small (completed)")


# ---------------------------------------------------------------------- bt-agent plan


@pytest.mark.usefixtures("_reset_logging")
def test_plan_command_on_local_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "in").mkdir()
    for name, size in (("a.csv", 300), ("b.csv", 200), ("c.csv", 100)):
        (tmp_path / "in" / name).write_bytes(b"x" * size)
    job = tmp_path / "job.json"
    job.write_text(
        json.dumps(
            {
                "TransformJobName": "local",
                "TransformInput": {
                    "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "in/"}}
                },
                "TransformOutput": {"S3OutputPath": "out/"},
            }
        )
    )
    monkeypatch.chdir(tmp_path)
    assert main(["plan", "--job", str(job), "--instance-count", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert main(["status", "--job", str(job)]) == 1
    assert "no state under file://" in capsys.readouterr().out
    assert main(["plan", "--job", str(job), "--instance-count", "0"]) == 2
    assert lines[0] == "local: plan over a fresh listing"
    assert lines[1].startswith("3 files, 600 bytes over 2 instance(s); expected imbalance 1.000")
    assert lines[2:4] == [
        "instance 0: 1 files, 300 bytes",
        f"  {300:>14}  file://{tmp_path}/in/a.csv",
    ]
    assert lines[4] == "instance 1: 2 files, 300 bytes"
