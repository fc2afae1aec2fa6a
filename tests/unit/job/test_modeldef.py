"""The model file (README "From SageMaker: the model file"): a CreateModel request or a
DescribeModel output, every rule, the ignored fields, and the ModelName check against the job."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from agent.job import (
    DataUri,
    JobError,
    LoadedModel,
    ModelDefinition,
    load_model,
    model_name_problem,
    parse_job,
    parse_model,
)

SECRET = "sk-live-0d9c8b7a6f5e4d3c2b1a"
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/churn-xgb:1.7-1"


def create_model() -> dict[str, Any]:
    """A CreateModel request as a user writes it for boto3 or the CLI."""
    return {
        "ModelName": "churn-xgb-2024-06",
        "PrimaryContainer": {
            "Image": IMAGE,
            "ModelDataUrl": "s3://ml-artifacts/churn/2024-06/model.tar.gz",
            "Environment": {"SAGEMAKER_PROGRAM": "inference.py", "API_TOKEN": SECRET},
            "Mode": "SingleModel",
            "ContainerHostname": "churn",
            "ImageConfig": {"RepositoryAccessMode": "Platform"},
        },
        "ExecutionRoleArn": "arn:aws:iam::123456789012:role/SageMakerExecution",
        "VpcConfig": {"SecurityGroupIds": ["sg-0a1b2c3d"], "Subnets": ["subnet-0e1f2a3b"]},
        "EnableNetworkIsolation": False,
        "Tags": [{"Key": "team", "Value": "growth"}],
    }


def describe_model() -> dict[str, Any]:
    """A DescribeModel output as boto3 returns it (times as strings, as json.dump writes)."""
    return {
        "ModelName": "churn-xgb-2024-06",
        "Containers": [
            {
                "Image": IMAGE,
                "Mode": "SingleModel",
                "ModelDataUrl": "s3://ml-artifacts/churn/2024-06/model.tar.gz",
                "Environment": {},
            }
        ],
        "InferenceExecutionConfig": {"Mode": "Serial"},
        "ExecutionRoleArn": "arn:aws:iam::123456789012:role/SageMakerExecution",
        "EnableNetworkIsolation": False,
        "CreationTime": "2024-06-03T09:14:07.120000+00:00",
        "ModelArn": "arn:aws:sagemaker:eu-west-1:123456789012:model/churn-xgb-2024-06",
        "DeploymentRecommendation": {"RecommendationStatus": "COMPLETED"},
        "ResponseMetadata": {"RequestId": "6f0e", "HTTPStatusCode": 200},
    }


def parse(document: object) -> LoadedModel:
    return parse_model(document, cwd="/work")


def problems(document: object) -> dict[str, str]:
    """JSON path -> message for every problem; fails if the document is valid."""
    with pytest.raises(JobError) as caught:
        parse(document)
    found: dict[str, str] = {}
    for problem in caught.value.problems:
        found[problem.path] = (found.get(problem.path, "") + " | " + problem.message).lstrip(" |")
    return found


def job(model_name: str | None) -> Any:
    document: dict[str, Any] = {
        "TransformJobName": "job-1",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://bkt/in/"}}
        },
        "TransformOutput": {"S3OutputPath": "s3://bkt/out/"},
    }
    if model_name is not None:
        document["ModelName"] = model_name
    return parse_job(document, cwd="/work").settings


# ---------------------------------------------------------------------- valid files


def test_a_create_model_request_gives_its_definition_and_the_ignored_paths() -> None:
    loaded = parse(create_model())
    assert loaded.model == ModelDefinition(
        name="churn-xgb-2024-06",
        image=IMAGE,
        model_data_url=DataUri("s3", "ml-artifacts", "churn/2024-06/model.tar.gz"),
        environment={"SAGEMAKER_PROGRAM": "inference.py", "API_TOKEN": SECRET},
        mode="SingleModel",
    )
    assert set(loaded.ignored) == {
        "$.PrimaryContainer.ContainerHostname",
        "$.PrimaryContainer.ImageConfig",
        "$.ExecutionRoleArn",
        "$.VpcConfig",
        "$.EnableNetworkIsolation",
        "$.Tags",
    }
    assert SECRET not in repr(loaded)  # values may be secrets


def test_a_describe_model_output_with_one_container_replays_unchanged() -> None:
    loaded = parse(describe_model())
    assert loaded.model.image == IMAGE
    assert loaded.model.model_data_url == DataUri(
        "s3", "ml-artifacts", "churn/2024-06/model.tar.gz"
    )
    assert loaded.model.environment == {}
    assert set(loaded.ignored) == {
        "$.InferenceExecutionConfig",
        "$.ExecutionRoleArn",
        "$.EnableNetworkIsolation",
        "$.CreationTime",
        "$.ModelArn",
        "$.DeploymentRecommendation",
        "$.ResponseMetadata",
    }


def test_primary_container_and_one_entry_of_containers_give_the_same_definition() -> None:
    primary = create_model()
    listed = copy.deepcopy(primary)
    listed["Containers"] = [listed.pop("PrimaryContainer")]
    assert parse(primary).model == parse(listed).model


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("file:///models/m/model.tar.gz", DataUri("file", "", "/models/m/model.tar.gz")),
        ("models/model.tar.gz", DataUri("file", "", "/work/models/model.tar.gz")),
        ("s3://b/model.tar.gz", DataUri("s3", "b", "model.tar.gz")),
    ],
)
def test_model_data_url_may_be_local(url: str, expected: DataUri) -> None:
    document = create_model()
    document["PrimaryContainer"]["ModelDataUrl"] = url
    assert parse(document).model.model_data_url == expected


def test_only_model_name_and_a_container_are_needed() -> None:
    model = parse({"ModelName": "m", "PrimaryContainer": {}}).model
    assert model == ModelDefinition("m", None, None, {}, "SingleModel")


def test_load_model_reads_a_file_and_names_it_when_it_is_not_json(tmp_path: Path) -> None:
    good, bad = tmp_path / "model.json", tmp_path / "broken.json"
    good.write_text(json.dumps(describe_model()))
    bad.write_text('{"ModelName": ')
    assert load_model(good).model.name == "churn-xgb-2024-06"
    with pytest.raises(JobError, match=r"broken\.json is not valid JSON: .* line 1"):
        load_model(bad)
    with pytest.raises(JobError, match=r"cannot read the model file .*missing\.json"):
        load_model(tmp_path / "missing.json")


# ---------------------------------------------------------------------- containers


def test_two_containers_are_an_inference_pipeline_and_not_supported() -> None:
    document = describe_model()
    document["Containers"].append(copy.deepcopy(document["Containers"][0]))
    found = problems(document)
    assert list(found) == ["$.Containers"]
    assert "lists 2 containers" in found["$.Containers"]
    assert "inference pipeline" in found["$.Containers"]
    assert "not supported" in found["$.Containers"]


def test_no_container_both_forms_and_no_entries_are_each_a_problem() -> None:
    assert "required field is missing" in problems({"ModelName": "m"})["$.PrimaryContainer"]
    both = create_model()
    both["Containers"] = [{}]
    assert "not both" in problems(both)["$.Containers"]
    assert "is empty" in problems({"ModelName": "m", "Containers": []})["$.Containers"]
    assert "an array" in problems({"ModelName": "m", "Containers": {}})["$.Containers"]


def test_multi_model_mode_is_not_supported() -> None:
    document = create_model()
    document["PrimaryContainer"]["Mode"] = "MultiModel"
    message = problems(document)["$.PrimaryContainer.Mode"]
    assert "MultiModel" in message and "not supported" in message and "SingleModel" in message
    document["PrimaryContainer"]["Mode"] = "singlemodel"
    assert 'did you mean "SingleModel"' in problems(document)["$.PrimaryContainer.Mode"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ModelPackageName", "arn:aws:sagemaker:eu-west-1:1:model-package/p/1"),
        ("ModelDataSource", {"S3DataSource": {"S3Uri": "s3://b/m/", "S3DataType": "S3Prefix"}}),
        ("AdditionalModelDataSources", []),
    ],
)
def test_model_data_the_agent_cannot_fetch_is_a_problem_not_a_silent_drop(
    field: str, value: object
) -> None:
    document = create_model()
    document["PrimaryContainer"][field] = value
    found = problems(document)
    assert list(found) == [f"$.PrimaryContainer.{field}"]
    assert "not supported" in found[f"$.PrimaryContainer.{field}"]


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("s3://ml-artifacts/churn/model.tar", "does not name a .tar.gz archive"),
        ("s3://ml-artifacts/churn/", "does not name a .tar.gz archive"),
        ("s3://ml-artifacts", "does not name a .tar.gz archive"),
        ("s3://ml-artifacts/.tar.gz/", "does not name a .tar.gz archive"),
        ("https://example.com/model.tar.gz", "is an https:// URL"),
        ("gs://bucket/model.tar.gz", "unsupported scheme"),
        ("", "the location is empty"),
    ],
)
def test_a_bad_model_data_url_says_what_is_allowed(url: str, words: str) -> None:
    document = create_model()
    document["PrimaryContainer"]["ModelDataUrl"] = url
    assert words in problems(document)["$.PrimaryContainer.ModelDataUrl"]


def test_a_bad_image_is_a_problem() -> None:
    for image, words in (("", "1 to 255"), ("-v:/x", "cannot start with '-'"), ("a b", "space")):
        document = create_model()
        document["PrimaryContainer"]["Image"] = image
        assert words in problems(document)["$.PrimaryContainer.Image"]


# ---------------------------------------------------------------------- the standard


def test_environment_follows_the_job_rules_without_showing_values() -> None:
    document = create_model()
    document["PrimaryContainer"]["Environment"] = {
        "1BAD": "x",
        "NUMBER": 5,
        "NUL": f"{SECRET}\x00",
        "LONG": SECRET * 1000,
    }
    found = problems(document)
    base = "$.PrimaryContainer.Environment"
    assert "variable name is not allowed" in found[base + '["1BAD"]']
    assert "expected a string value" in found[f"{base}.NUMBER"]
    assert "NUL" in found[f"{base}.NUL"]
    assert "at most 10240" in found[f"{base}.LONG"]
    assert all(SECRET not in message for message in found.values())


def test_a_container_may_have_more_environment_entries_than_a_job() -> None:
    document = create_model()
    document["PrimaryContainer"]["Environment"] = {f"V{i}": "x" for i in range(100)}
    assert len(parse(document).model.environment) == 100
    document["PrimaryContainer"]["Environment"]["V100"] = "x"
    assert "at most 100" in problems(document)["$.PrimaryContainer.Environment"]


def test_every_problem_is_reported_at_once_with_its_path() -> None:
    document = create_model()
    document["ModelName"] = "bad name!"
    document["Unknown"] = 1
    document["PrimaryContainer"]["Mode"] = "MultiModel"
    document["PrimaryContainer"]["ModelDataUrl"] = "s3://b/model.zip"
    document["PrimaryContainer"]["Imgae"] = "x"
    found = problems(document)
    assert set(found) == {
        "$.ModelName",
        "$.Unknown",
        "$.PrimaryContainer.Mode",
        "$.PrimaryContainer.ModelDataUrl",
        "$.PrimaryContainer.Imgae",
    }
    assert 'did you mean "Image"' in found["$.PrimaryContainer.Imgae"]


def test_not_an_object_and_lone_surrogates_are_refused() -> None:
    assert "must hold one JSON object" in problems([])["$"]
    found = problems({"ModelName": "m", "PrimaryContainer": {"Image": "a\ud800"}})
    assert "unpaired surrogate" in found["$.PrimaryContainer.Image"]


# ---------------------------------------------------------------------- with the job


def test_the_job_model_name_must_match_the_model_file() -> None:
    model = parse(create_model()).model
    assert model_name_problem(job("churn-xgb-2024-06"), model) is None
    assert model_name_problem(job(None), model) is None
    message = model_name_problem(job("churn-xgb-2024-05"), model)
    assert message is not None
    assert '"churn-xgb-2024-05"' in message and '"churn-xgb-2024-06"' in message
    nameless = parse({"PrimaryContainer": {}}).model
    assert model_name_problem(job("anything"), nameless) is None
