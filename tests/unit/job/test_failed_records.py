"""``Agent.MaxFailedRecords`` and ``Agent.FailedRecordPlaceholder`` (README, Failed
records): their ranges, the combinations that cannot work, and the settings hash."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from agent.job import settings_hash
from tests.support.jobdocs import parse, problems


def job(
    *,
    assemble_with: str | None = "Line",
    payload_mb: int | None = None,
    strategy: str | None = None,
    processing: dict[str, str] | None = None,
    content_type: str | None = None,
    **agent: Any,
) -> dict[str, Any]:
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
    if payload_mb is not None:
        document["MaxPayloadInMB"] = payload_mb
    if strategy is not None:
        document["BatchStrategy"] = strategy
    if content_type is not None:
        document["TransformInput"]["ContentType"] = content_type
        document["TransformOutput"]["Accept"] = content_type
    if processing is not None:
        document["DataProcessing"] = processing
    if agent:
        document["Agent"] = agent
    return document


def test_off_by_default() -> None:
    agent = parse(job()).settings.agent
    assert agent.max_failed_records is None and agent.failed_record_placeholder is None


@pytest.mark.parametrize("value", [-1, 0, 3, 1_000_000])
def test_an_integer_from_minus_one(value: int) -> None:
    assert parse(job(MaxFailedRecords=value)).settings.agent.max_failed_records == value


@pytest.mark.parametrize("value", [-2, 1.5, "10", True, None])
def test_anything_else_is_refused(value: object) -> None:
    [(path, _)] = problems(job(MaxFailedRecords=value))
    assert path == "$.Agent.MaxFailedRecords"


def test_a_placeholder_is_read() -> None:
    agent = parse(job(MaxFailedRecords=5, FailedRecordPlaceholder="ERROR,,")).settings.agent
    assert agent.failed_record_placeholder == "ERROR,,"


@pytest.mark.parametrize("text", ["a\nb", "a\r", "\n"])
def test_a_placeholder_holds_no_line_break(text: str) -> None:
    [(path, message)] = problems(job(MaxFailedRecords=5, FailedRecordPlaceholder=text))
    assert path == "$.Agent.FailedRecordPlaceholder" and "line break" in message


def test_a_placeholder_needs_isolation() -> None:
    [(path, message)] = problems(job(FailedRecordPlaceholder="x"))
    assert path == "$.Agent.FailedRecordPlaceholder"
    assert "without $.Agent.MaxFailedRecords" in message


@pytest.mark.parametrize("assemble_with", [None, "None"])
def test_a_placeholder_needs_assemble_with_line(assemble_with: str | None) -> None:
    document = job(assemble_with=assemble_with, MaxFailedRecords=1, FailedRecordPlaceholder="x")
    [(path, message)] = problems(document)
    assert path == "$.Agent.FailedRecordPlaceholder" and "AssembleWith Line" in message


@pytest.mark.parametrize("strategy", ["MultiRecord", "SingleRecord"])
def test_isolation_needs_held_bodies(strategy: str) -> None:
    [(path, message)] = problems(job(payload_mb=0, strategy=strategy, MaxFailedRecords=1))
    assert path == "$.Agent.MaxFailedRecords" and "MaxPayloadInMB above 0" in message


def test_with_a_json_join_the_placeholder_must_be_json() -> None:
    processing = {"JoinSource": "Input"}
    document = job(
        content_type="application/jsonlines",
        processing=processing,
        MaxFailedRecords=1,
        FailedRecordPlaceholder="oops",
    )
    [(path, message)] = problems(document)
    assert path == "$.Agent.FailedRecordPlaceholder" and "is not JSON" in message
    document["Agent"]["FailedRecordPlaceholder"] = '{"error": true}'
    assert parse(document).settings.agent.failed_record_placeholder == '{"error": true}'


def test_with_a_csv_join_any_line_will_do() -> None:
    document = job(
        content_type="text/csv",
        processing={"JoinSource": "Input"},
        MaxFailedRecords=1,
        FailedRecordPlaceholder="oops",
    )
    assert parse(document).settings.agent.failed_record_placeholder == "oops"


def test_not_in_the_settings_hash() -> None:
    """Without failed records the outputs are the same bytes: a rerun that turns isolation
    on keeps the files already completed and redoes the failed ones (README)."""
    plain = parse(job()).settings
    isolating = dataclasses.replace(
        plain,
        agent=dataclasses.replace(plain.agent, max_failed_records=5, failed_record_placeholder="x"),
    )
    assert settings_hash(isolating) == settings_hash(plain)
