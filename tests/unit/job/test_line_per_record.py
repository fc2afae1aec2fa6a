"""``Agent.RequireLinePerRecord`` (README, The job file): a boolean, off by default, valid
only with ``AssembleWith: Line``, outside the settings hash."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from agent.job import JobError, settings_hash
from tests.support.jobdocs import parse


def job(*, assemble_with: str | None = "Line", **agent: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "TransformJobName": "job-1",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://bkt/in/"}},
            "SplitType": "Line",
        },
        "TransformOutput": {"S3OutputPath": "s3://bkt/out/"},
    }
    if assemble_with is not None:
        document["TransformOutput"]["AssembleWith"] = assemble_with
    if agent:
        document["Agent"] = agent
    return document


def only_problem(document: dict[str, Any]) -> tuple[str, str]:
    with pytest.raises(JobError) as caught:
        parse(document)
    assert len(caught.value.problems) == 1, caught.value.problems
    problem = caught.value.problems[0]
    return problem.path, problem.message


def test_off_by_default() -> None:
    assert parse(job()).settings.agent.require_line_per_record is False


@pytest.mark.parametrize("value", [True, False])
def test_read_with_assemble_with_line(value: bool) -> None:
    loaded = parse(job(RequireLinePerRecord=value))
    assert loaded.settings.agent.require_line_per_record is value
    assert loaded.warnings == ()


@pytest.mark.parametrize("value", [1, 0, "true", None, [True]])
def test_only_true_or_false(value: object) -> None:
    path, message = only_problem(job(RequireLinePerRecord=value))
    assert path == "$.Agent.RequireLinePerRecord"
    assert "expected true or false" in message


@pytest.mark.parametrize("assemble_with", [None, "None"])
def test_refused_unless_assemble_with_is_line(assemble_with: str | None) -> None:
    path, message = only_problem(job(assemble_with=assemble_with, RequireLinePerRecord=True))
    assert path == "$.Agent.RequireLinePerRecord"
    assert "$.TransformOutput.AssembleWith None" in message
    assert 'set AssembleWith to "Line"' in message


def test_false_is_fine_without_assemble_with_line() -> None:
    loaded = parse(job(assemble_with="None", RequireLinePerRecord=False))
    assert loaded.settings.agent.require_line_per_record is False


def test_a_misspelt_key_is_named() -> None:
    path, message = only_problem(job(RequireLinePerRecords=True))
    assert path == "$.Agent.RequireLinePerRecords"
    assert 'did you mean "RequireLinePerRecord"' in message


def test_not_in_the_settings_hash() -> None:
    """It decides which outputs succeed, not their bytes: a resume with it turned on or off
    keeps the files already completed (README, Many instances, state and resume)."""
    plain = parse(job()).settings
    checked = dataclasses.replace(
        plain, agent=dataclasses.replace(plain.agent, require_line_per_record=True)
    )
    assert settings_hash(checked) == settings_hash(plain)
