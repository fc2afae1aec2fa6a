"""DataProcessing at validation: filters parsed, combinations checked (docs/design.md §2.5)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from agent.dataproc import DataProcessingError, make_processor
from agent.job import DataProcessing, JobError, LoadedJob, load_job, parse_job

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def job(
    content_type: str | None = "text/csv",
    split: str = "Line",
    accept: str | None = "text/csv",
    assemble: str = "Line",
    **processing: str,
) -> dict[str, Any]:
    source = {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://bkt/in/"}}
    document: dict[str, Any] = {
        "TransformJobName": "dp",
        "TransformInput": {"DataSource": source, "SplitType": split},
        "TransformOutput": {"S3OutputPath": "s3://bkt/out/", "AssembleWith": assemble},
        "DataProcessing": processing,
    }
    if content_type is not None:
        document["TransformInput"]["ContentType"] = content_type
    if accept is not None:
        document["TransformOutput"]["Accept"] = accept
    return document


def parse(document: dict[str, Any]) -> LoadedJob:
    return parse_job(document, cwd="/")


def problems(document: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(JobError) as caught:
        parse(document)
    return {problem.path: problem.message for problem in caught.value.problems}


def test_the_example_job_is_valid_and_makes_a_processor() -> None:
    settings = load_job(EXAMPLES / "job.json").settings
    processor = make_processor(settings)
    assert processor is not None and processor.filters_input and processor.processes_output


@pytest.mark.parametrize(
    ("value", "column", "words"),
    [
        ("$[1:2:3]", 6, "no step"),
        ("$[1:][0:]", 7, "only one slice"),
        ("$..id", 2, "recursive descent"),
        ("$[?(@.x)]", 3, "filter and script expressions"),
        ("[1:]", 1, "starts with $"),
    ],
)
def test_invalid_filters_are_reported_with_their_position(
    value: str, column: int, words: str
) -> None:
    for key in ("InputFilter", "OutputFilter"):
        found = problems(job(**{key: value}))
        message = found.pop(f"$.DataProcessing.{key}")
        assert found == {}
        assert words in message and f"at character {column}" in message
        assert message.startswith(f'"{value}" is not a supported JSONPath filter')


def test_every_problem_is_reported_at_once() -> None:
    found = problems(job(split="None", assemble="None", InputFilter="$[1", OutputFilter="$..x"))
    assert set(found) == {
        "$.DataProcessing.InputFilter",
        "$.DataProcessing.OutputFilter",
        "$.TransformInput.SplitType",
        "$.TransformOutput.AssembleWith",
    }
    found = problems(job(split="None", assemble="None", accept=None, JoinSource="Input"))
    assert set(found) == {
        "$.TransformOutput.Accept",
        "$.TransformInput.SplitType",
        "$.TransformOutput.AssembleWith",
    }


@pytest.mark.parametrize(
    ("fields", "path", "words"),
    [
        ({"split": "None"}, "$.TransformInput.SplitType", "text/csv records needs SplitType Line"),
        ({"split": "RecordIO"}, "$.TransformInput.SplitType", "found RecordIO"),
        ({"assemble": "None"}, "$.TransformOutput.AssembleWith", "needs AssembleWith Line"),
        (
            {"content_type": "application/jsonlines", "accept": None, "split": "None"},
            "$.TransformInput.SplitType",
            "application/jsonlines records needs SplitType Line",
        ),
        (
            {"content_type": "application/json", "accept": None, "split": "TFRecord"},
            "$.TransformInput.SplitType",
            "or None for one application/json document",
        ),
        (
            {"content_type": "application/x-recordio-protobuf", "accept": None},
            "$.TransformInput.ContentType",
            "application/x-recordio-protobuf is not one of them",
        ),
    ],
)
def test_unsupported_combinations(fields: dict[str, Any], path: str, words: str) -> None:
    found = problems(job(**fields, InputFilter="$[1:]"))
    assert list(found) == [path]
    assert words in found[path]


def test_fields_already_wrong_are_not_judged_again() -> None:
    found = problems(job(split="Lines", assemble="line", InputFilter="$[1:]"))
    assert set(found) == {"$.TransformInput.SplitType", "$.TransformOutput.AssembleWith"}
    assert "did you mean" in found["$.TransformInput.SplitType"]


def test_join_needs_accept_equal_to_content_type() -> None:
    found = problems(job(accept="application/json", JoinSource="Input"))
    assert "Accept must equal ContentType (text/csv)" in found["$.TransformOutput.Accept"]
    parse(job(accept="Text/CSV; charset=utf-8", JoinSource="Input"))  # same media type
    parse(job(content_type=None, accept=None, JoinSource="Input"))  # both absent: JSON


def test_csv_filters_pick_columns_by_index() -> None:
    found = problems(job(OutputFilter="$['id','SageMakerOutput']", JoinSource="Input"))
    assert "pick them by index" in found["$.DataProcessing.OutputFilter"]
    found = problems(job(InputFilter="$.features"))
    assert "text/csv row is an array" in found["$.DataProcessing.InputFilter"]


def test_only_the_sides_in_use_are_checked() -> None:
    # An image model whose JSON answers are filtered: the input type does not matter.
    parse(job(content_type="image/jpeg", accept="application/json", OutputFilter="$.label"))
    found = problems(job(content_type="image/jpeg", accept=None, OutputFilter="$.label"))
    assert "image/jpeg is not one of them" in found["$.TransformInput.ContentType"]
    found = problems(job(content_type="application/json", accept="image/png", OutputFilter="$.x"))
    assert list(found) == ["$.TransformOutput.Accept"]
    # With everything at its default, any content type and split type is fine.
    parse(job(content_type="image/jpeg", split="RecordIO", InputFilter="$", JoinSource="None"))


@pytest.mark.parametrize(
    ("content_type", "split", "processing"),
    [
        ("application/json", "None", {"InputFilter": "$.instances", "JoinSource": "Input"}),
        ("application/json", "Line", {"OutputFilter": "$['id','SageMakerOutput']"}),
        ("application/jsonlines", "Line", {"InputFilter": "$.features", "JoinSource": "Input"}),
        ("text/csv", "Line", {"InputFilter": "$[0,5:]", "OutputFilter": "$[*]"}),
    ],
)
def test_supported_combinations(content_type: str, split: str, processing: dict[str, str]) -> None:
    # AssembleWith None is fine for JSON: each output line already ends with a newline.
    assemble = "Line" if content_type == "text/csv" else "None"
    settings = parse(job(content_type, split, content_type, assemble, **processing)).settings
    assert make_processor(settings) is not None


def test_warnings_for_inclusive_slices_and_missing_types() -> None:
    (note,) = parse(job(InputFilter="$[1:4]")).warnings
    assert "InputFilter $[1:4]" in note and "includes its end index 4" in note
    assert parse(job(InputFilter="$[1:]")).warnings == ()
    (note,) = parse(job(content_type=None, accept=None, InputFilter="$.x")).warnings
    assert "read as JSON" in note


def test_make_processor_refuses_settings_validation_would_refuse() -> None:
    settings = parse(job()).settings
    bad = dataclasses.replace(
        settings, data_processing=DataProcessing("$.id", "$", "None")
    )  # a name filter on CSV rows, built without validation
    with pytest.raises(DataProcessingError, match="pick them by index"):
        make_processor(bad)
    assert make_processor(settings) is None
