"""``Agent.MaxRecordsPerRequest`` in the job file (README, The job file): its range, the
warnings where it has no effect, and the settings hash, which it changes only where it
can change an output."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from agent.job import JobError, JobSettings, output_settings, settings_hash
from tests.support.jobdocs import parse

FIELD = "$.Agent.MaxRecordsPerRequest"


def job(cap: object = None, **top: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "TransformJobName": "job-1",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://bkt/in/"}},
            "SplitType": top.pop("SplitType", "Line"),
        },
        "TransformOutput": {"S3OutputPath": "s3://bkt/out/"},
        **top,
    }
    if cap is not None:
        document["Agent"] = {"MaxRecordsPerRequest": cap}
    return document


def resolved(settings: JobSettings, strategy: str = "MultiRecord") -> JobSettings:
    """As the runner hashes it: execution parameters filled in."""
    return dataclasses.replace(
        settings,
        max_concurrent_transforms=settings.max_concurrent_transforms or 1,
        max_payload_mb=6 if settings.max_payload_mb is None else settings.max_payload_mb,
        batch_strategy=settings.batch_strategy or strategy,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("cap", [1, 7, 100_000, 10**12])
def test_a_cap_of_one_or_more_is_taken(cap: int) -> None:
    loaded = parse(job(cap))
    assert loaded.settings.agent.max_records_per_request == cap
    assert loaded.settings.records_cap == cap
    assert loaded.warnings == ()


def test_absent_means_no_cap() -> None:
    settings = parse(job()).settings
    assert settings.agent.max_records_per_request is None and settings.records_cap is None


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (0, "0 is out of range; use an integer 1 or more"),
        (-3, "-3 is out of range; use an integer 1 or more"),
        ("100", "expected an integer, found a string"),
        (2.5, "expected an integer, found a number with a fraction"),
        (True, "expected an integer, found a boolean"),
    ],
)
def test_a_bad_cap_is_refused_with_its_path(value: object, words: str) -> None:
    with pytest.raises(JobError) as caught:
        parse(job(value))
    assert [(p.path, p.message) for p in caught.value.problems] == [(FIELD, words)]


def test_null_is_not_absent() -> None:
    document = job()
    document["Agent"] = {"MaxRecordsPerRequest": None}
    with pytest.raises(JobError) as caught:
        parse(document)
    (problem,) = caught.value.problems
    assert problem.path == FIELD and "found null; to leave the field out" in problem.message


def test_misspelt_and_misplaced_keys_point_at_it() -> None:
    document = job()
    document["Agent"] = {"MaxRecordPerRequest": 5}
    with pytest.raises(JobError, match='did you mean "MaxRecordsPerRequest"'):
        parse(document)
    with pytest.raises(JobError, match=r"MaxRecordsPerRequest belongs under \$\.Agent"):
        parse(job(MaxRecordsPerRequest=5))


def test_where_it_has_no_effect_it_is_accepted_with_a_warning() -> None:
    loaded = parse(job(10, SplitType="None"))
    assert loaded.settings.records_cap is None
    assert loaded.warnings == (
        "Agent.MaxRecordsPerRequest 10 has no effect with SplitType None: each input object "
        "is one record, sent in one request",
    )
    loaded = parse(job(10, BatchStrategy="SingleRecord"))
    assert loaded.settings.records_cap is None
    assert loaded.warnings == (
        "Agent.MaxRecordsPerRequest 10 has no effect with BatchStrategy SingleRecord: each "
        "request holds one record",
    )


def test_the_settings_hash_changes_only_where_the_cap_can_change_an_output() -> None:
    plain = resolved(parse(job()).settings)
    capped = resolved(parse(job(50)).settings)
    assert "MaxRecordsPerRequest" not in output_settings(plain)  # older hashes stay valid
    assert output_settings(capped)["MaxRecordsPerRequest"] == 50
    assert settings_hash(capped) != settings_hash(plain)
    assert settings_hash(resolved(parse(job(51)).settings)) != settings_hash(capped)
    # SingleRecord (from the job file or resolved from the model) and SplitType None:
    # one record a body anyway, so the same outputs and the same hash as without it.
    single = resolved(parse(job(50)).settings, "SingleRecord")
    assert settings_hash(single) == settings_hash(resolved(parse(job()).settings, "SingleRecord"))
    whole = resolved(parse(job(50, SplitType="None")).settings)
    assert settings_hash(whole) == settings_hash(resolved(parse(job(SplitType="None")).settings))
