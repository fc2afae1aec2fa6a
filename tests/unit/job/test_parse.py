"""The job file (README, The job file): every validation rule, the defaults, the settings object."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from agent.job import (
    DataUri,
    JobError,
    JobSettings,
    LoadedJob,
    load_job,
    output_settings,
    parse_job,
    settings_hash,
    with_overrides,
)

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
SECRET = "sk-live-7f3a9c1e5b2d4f6a8c0e"


def minimal() -> dict[str, Any]:
    return {
        "TransformJobName": "job-1",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://bkt/in/"}}
        },
        "TransformOutput": {"S3OutputPath": "s3://bkt/out/"},
    }


def with_field(path: str, value: Any) -> dict[str, Any]:
    """``minimal()`` with ``value`` set at a dotted path (intermediate objects created)."""
    document = minimal()
    *parents, last = path.split(".")
    target = document
    for key in parents:
        target = target.setdefault(key, {})
    target[last] = value
    return document


def parse(document: object) -> LoadedJob:
    return parse_job(document, cwd="/work")


def problems(document: object) -> dict[str, str]:
    """JSON path -> message for every problem; fails if the document is valid."""
    with pytest.raises(JobError) as caught:
        parse(document)
    found: dict[str, str] = {}
    for problem in caught.value.problems:
        found[problem.path] = (found.get(problem.path, "") + " | " + problem.message).lstrip(" |")
    return found


def only_problem(document: object) -> tuple[str, str]:
    found = problems(document)
    assert len(found) == 1, found
    return next(iter(found.items()))


# ---------------------------------------------------------------------- defaults


def test_minimal_job_gets_the_defaults() -> None:
    loaded = parse(minimal())
    job = loaded.settings
    assert loaded.ignored == () and loaded.warnings == ()
    assert job.transform_job_name == "job-1"
    assert job.model_name is None
    # Resolved later against /execution-parameters, so they stay unset here.
    assert job.max_concurrent_transforms is None
    assert job.max_payload_mb is None and job.max_payload_bytes is None
    assert job.batch_strategy is None
    assert job.model_client.invocations_timeout_seconds == 600
    assert job.model_client.invocations_max_retries == 3
    assert dict(job.environment) == {}
    assert job.input.data_type == "S3Prefix"
    assert job.input.uri == DataUri("s3", "bkt", "in/")
    assert (job.input.content_type, job.input.compression, job.input.split_type) == (
        None,
        "None",
        "None",
    )
    assert job.output.uri == DataUri("s3", "bkt", "out/")
    assert (job.output.accept, job.output.assemble_with, job.output.kms_key_id) == (
        None,
        "None",
        None,
    )
    assert job.instance_count == 1
    processing = job.data_processing
    assert (processing.input_filter, processing.output_filter, processing.join_source) == (
        "$",
        "$",
        "None",
    )
    agent = job.agent
    assert agent.model_url == "http://127.0.0.1:8080"
    assert agent.model_command is None
    assert agent.model_startup_timeout_seconds == 600
    assert agent.coordination == "Static"
    assert agent.reorder_buffer_mb == 256 and agent.reorder_buffer_bytes == 256 << 20
    assert str(job.state_uri) == "s3://bkt/out/_bt-agent/job-1/"


def test_example_job_uses_every_field() -> None:
    loaded = load_job(EXAMPLES / "job.json")
    job = loaded.settings
    assert loaded.ignored == ()
    assert job.max_concurrent_transforms == 4
    assert job.max_payload_mb == 6 and job.max_payload_bytes == 6 << 20
    assert job.batch_strategy == "MultiRecord"
    assert job.input.content_type == "text/csv" and job.input.split_type == "Line"
    assert job.output.accept == "text/csv" and job.output.assemble_with == "Line"
    assert job.output.kms_key_id is not None
    assert job.data_processing.join_source == "Input"
    assert job.agent.model_command is not None
    raw = json.loads((EXAMPLES / "job.json").read_text())
    every = {
        "TransformJobName", "ModelName", "MaxConcurrentTransforms", "MaxPayloadInMB",
        "BatchStrategy", "ModelClientConfig", "Environment", "TransformInput",
        "TransformOutput", "TransformResources", "DataProcessing", "Agent",
    }  # fmt: skip
    assert set(raw) == every
    assert set(raw["TransformInput"]) == {
        "DataSource",
        "ContentType",
        "CompressionType",
        "SplitType",
    }
    assert set(raw["TransformOutput"]) == {"S3OutputPath", "Accept", "AssembleWith", "KmsKeyId"}
    assert set(raw["DataProcessing"]) == {"InputFilter", "OutputFilter", "JoinSource"}
    assert set(raw["ModelClientConfig"]) == {"InvocationsTimeoutInSeconds", "InvocationsMaxRetries"}


def test_describe_transform_job_output_replays_with_ignored_fields_named() -> None:
    loaded = load_job(EXAMPLES / "describe-transform-job.json")
    assert set(loaded.ignored) == {
        "$.TransformJobArn",
        "$.TransformJobStatus",
        "$.DataCaptureConfig",
        "$.CreationTime",
        "$.TransformStartTime",
        "$.TransformEndTime",
        "$.ExperimentConfig",
        "$.TransformResources.InstanceType",
    }
    assert loaded.settings.output.kms_key_id is None  # DescribeTransformJob's "" means none


@pytest.mark.parametrize(
    "key",
    [
        "DataCaptureConfig", "Tags", "ExperimentConfig", "TransformJobArn", "TransformJobStatus",
        "FailureReason", "CreationTime", "TransformStartTime", "TransformEndTime",
        "LabelingJobArn", "AutoMLJobArn", "ResponseMetadata",
    ],
)  # fmt: skip
def test_sagemaker_fields_without_effect_are_accepted_and_reported(key: str) -> None:
    document = minimal()
    document[key] = {"anything": ["goes", 1]}
    assert parse(document).ignored == (f"$.{key}",)


@pytest.mark.parametrize("key", ["InstanceType", "VolumeKmsKeyId", "TransformAmiVersion"])
def test_transform_resources_fields_without_effect_are_accepted(key: str) -> None:
    loaded = parse(with_field(f"TransformResources.{key}", "ml.m5.xlarge"))
    assert loaded.ignored == (f"$.TransformResources.{key}",)


# ---------------------------------------------------------------------- top level


@pytest.mark.parametrize("name", ["a", "A9", "a-b", "a--b", "x" * 63])
def test_job_name_accepted(name: str) -> None:
    assert parse(with_field("TransformJobName", name)).settings.transform_job_name == name


@pytest.mark.parametrize("name", ["-a", "a-", "a_b", "a.b", "x" * 64, "", "é"])
def test_job_name_rejected(name: str) -> None:
    path, message = only_problem(with_field("TransformJobName", name))
    assert path == "$.TransformJobName"
    assert "63" in message


def test_model_name_is_informational_but_checked() -> None:
    assert parse(with_field("ModelName", "my-model")).settings.model_name == "my-model"
    assert only_problem(with_field("ModelName", "my_model"))[0] == "$.ModelName"


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("MaxConcurrentTransforms", 0, None),  # 0 means absent, as in SageMaker
        ("MaxConcurrentTransforms", 1, 1),
        ("MaxConcurrentTransforms", 1000, 1000),
        ("MaxPayloadInMB", 0, 0),  # no bound: streamed
        ("MaxPayloadInMB", 100, 100),
        ("BatchStrategy", "SingleRecord", "SingleRecord"),
    ],
)
def test_execution_parameters_accepted(key: str, value: Any, expected: Any) -> None:
    document = with_field(key, value)
    document["TransformInput"]["SplitType"] = "Line"
    settings = parse(document).settings
    attribute = {
        "MaxConcurrentTransforms": "max_concurrent_transforms",
        "MaxPayloadInMB": "max_payload_mb",
        "BatchStrategy": "batch_strategy",
    }[key]
    assert getattr(settings, attribute) == expected


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("MaxConcurrentTransforms", -1, "0 or more"),
        ("MaxConcurrentTransforms", "4", "expected an integer, found a string"),
        ("MaxConcurrentTransforms", True, "found a boolean"),
        ("MaxConcurrentTransforms", 4.0, "found a number with a fraction"),
        ("MaxConcurrentTransforms", None, "found null; to leave the field out, remove the key"),
        ("MaxPayloadInMB", 101, "from 0 to 100"),
        ("MaxPayloadInMB", -1, "from 0 to 100"),
        ("BatchStrategy", "multirecord", 'did you mean "MultiRecord"'),
        ("BatchStrategy", "MULTI_RECORD", "use one of MultiRecord, SingleRecord"),
        ("BatchStrategy", 1, "expected a string"),
    ],
)
def test_execution_parameters_rejected(key: str, value: Any, words: str) -> None:
    path, message = only_problem(with_field(key, value))
    assert path == f"$.{key}"
    assert words in message


@pytest.mark.parametrize(
    ("key", "value", "ok"),
    [
        ("InvocationsTimeoutInSeconds", 1, True),
        ("InvocationsTimeoutInSeconds", 3600, True),
        ("InvocationsTimeoutInSeconds", 0, False),
        ("InvocationsTimeoutInSeconds", 3601, False),
        ("InvocationsMaxRetries", 0, True),
        ("InvocationsMaxRetries", 3, True),
        ("InvocationsMaxRetries", 4, False),
        ("InvocationsMaxRetries", -1, False),
        ("InvocationsMaxRetries", False, False),
    ],
)
def test_model_client_config(key: str, value: Any, ok: bool) -> None:
    document = with_field(f"ModelClientConfig.{key}", value)
    if not ok:
        assert only_problem(document)[0] == f"$.ModelClientConfig.{key}"
        return
    client = parse(document).settings.model_client
    field = {"InvocationsTimeoutInSeconds": "invocations_timeout_seconds"}.get(
        key, "invocations_max_retries"
    )
    assert getattr(client, field) == value  # 0 retries stays 0, not the default


# ---------------------------------------------------------------------- Environment


def test_environment_accepted() -> None:
    env = {f"VAR_{i}": "x" * 10240 for i in range(16)} | {"_A": ""}
    del env["VAR_0"]
    assert dict(parse(with_field("Environment", env)).settings.environment) == env


def test_environment_rules_and_values_never_in_messages() -> None:
    env: dict[str, Any] = {f"V{i}": SECRET for i in range(15)}
    env |= {"9LIVES": SECRET, "has-dash": SECRET, "TOO_LONG": SECRET * 1000, "NUMBER": 42}
    env["NUL"] = SECRET + "\x00"
    found = problems(with_field("Environment", env))
    assert "entries; at most 16" in found["$.Environment"]
    assert "variable name is not allowed" in found['$.Environment["9LIVES"]']
    assert "variable name is not allowed" in found['$.Environment["has-dash"]']
    assert "at most 10240" in found["$.Environment.TOO_LONG"]
    assert "expected a string value, found an integer" in found["$.Environment.NUMBER"]
    assert "NUL" in found["$.Environment.NUL"]
    assert "42" not in found["$.Environment.NUMBER"]
    assert all(SECRET[:8] not in message for message in found.values())


def test_environment_must_be_an_object() -> None:
    assert only_problem(with_field("Environment", [["A", "b"]]))[0] == "$.Environment"


def test_settings_repr_hides_environment_values() -> None:
    settings = parse(with_field("Environment", {"TOKEN": SECRET})).settings
    assert SECRET not in repr(settings)
    assert settings.environment["TOKEN"] == SECRET


# ---------------------------------------------------------------------- TransformInput

S3_DATA_SOURCE = "TransformInput.DataSource.S3DataSource"


@pytest.mark.parametrize("data_type", ["AugmentedManifestFile", "Converse"])
def test_data_types_sagemaker_refuses_for_transform_jobs(data_type: str) -> None:
    path, message = only_problem(with_field(f"{S3_DATA_SOURCE}.S3DataType", data_type))
    assert path == f"$.{S3_DATA_SOURCE}.S3DataType"
    assert "SageMaker does not accept it for transform jobs" in message


def test_data_type_enum() -> None:
    document = with_field(f"{S3_DATA_SOURCE}.S3DataType", "ManifestFile")
    document["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] = "s3://bkt/in.manifest"
    assert parse(document).settings.input.data_type == "ManifestFile"
    message = only_problem(with_field(f"{S3_DATA_SOURCE}.S3DataType", "s3prefix"))[1]
    assert 'did you mean "S3Prefix"' in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("s3://bkt/in/", DataUri("s3", "bkt", "in/")),
        ("s3://bkt/a/b.csv", DataUri("s3", "bkt", "a/b.csv")),
        ("s3://bkt", DataUri("s3", "bkt", "")),
        ("s3://my.bucket-1/x", DataUri("s3", "my.bucket-1", "x")),
        ("file:///data/in/", DataUri("file", "", "/data/in/")),
        ("file:///data/my%20in", DataUri("file", "", "/data/my in")),
        ("file://localhost/data", DataUri("file", "", "/data")),
        ("/data/in", DataUri("file", "", "/data/in")),
        ("data/in/", DataUri("file", "", "/work/data/in/")),  # relative to the cwd
        ("./data/../in", DataUri("file", "", "/work/in")),
    ],
)
def test_location_forms(text: str, expected: DataUri) -> None:
    document = with_field(f"{S3_DATA_SOURCE}.S3Uri", text)
    assert parse(document).settings.input.uri == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "s3://bucket/prefix, file:///absolute/path or a local path"),
        ("s3:///prefix", "valid bucket name"),
        ("s3://my bucket/x", "valid bucket name"),
        ("file://relative/path", "three slashes"),
        ("https://bkt.s3.amazonaws.com/in/", "needs s3://bucket/prefix"),
        ("gs://bkt/in/", 'unsupported scheme "gs"'),
        (" s3://bkt/in/", "leading or trailing spaces"),
        ("s3://bkt/" + "k" * 1020, "at most 1024"),
        (["s3://bkt/in/"], "expected a string"),
    ],
)
def test_location_rejected(text: Any, words: str) -> None:
    for field in (f"{S3_DATA_SOURCE}.S3Uri", "TransformOutput.S3OutputPath", "Agent.StateUri"):
        path, message = only_problem(with_field(field, text))
        assert path == "$." + field
        assert words in message


@pytest.mark.parametrize(
    ("source", "output"),
    [
        ("s3://bkt/in/", "s3://bkt/in/"),
        ("s3://bkt/in/", "s3://bkt/in"),
        ("/data/in/", "file:///data/in"),
        ("data/in", "/work/data/in/"),
    ],
)
def test_output_must_not_equal_input_prefix(source: str, output: str) -> None:
    document = with_field(f"{S3_DATA_SOURCE}.S3Uri", source)
    document["TransformOutput"]["S3OutputPath"] = output
    path, message = only_problem(document)
    assert path == "$.TransformOutput.S3OutputPath"
    assert "equals the input prefix" in message


def test_output_under_input_prefix_is_allowed() -> None:
    document = with_field("TransformOutput.S3OutputPath", "s3://bkt/in/results/")
    assert parse(document).settings.output.uri.key == "in/results/"


@pytest.mark.parametrize(
    ("field", "allowed"),
    [
        ("TransformInput.CompressionType", ("None", "Gzip")),
        ("TransformInput.SplitType", ("None", "Line", "RecordIO", "TFRecord")),
        ("TransformOutput.AssembleWith", ("None", "Line")),
        ("DataProcessing.JoinSource", ("None", "Input")),
        ("Agent.Coordination", ("Static", "Lease")),
        ("BatchStrategy", ("MultiRecord", "SingleRecord")),
    ],
)
def test_enums_exactly_as_sagemaker_spells_them(field: str, allowed: tuple[str, ...]) -> None:
    for value in allowed:
        parse(with_field(field, value))
    for value in {v.lower() for v in allowed} | {"NONE ", "gzip", ""}:
        if value in allowed:
            continue
        path, message = only_problem(with_field(field, value))
        assert path == "$." + field
        assert "use one of " + ", ".join(allowed) in message


@pytest.mark.parametrize("field", ["TransformInput.ContentType", "TransformOutput.Accept"])
def test_mime_types_become_headers(field: str) -> None:
    settings = parse(with_field(field, "application/jsonlines")).settings
    assert "application/jsonlines" in (settings.input.content_type, settings.output.accept)
    blank = parse(with_field(field, "")).settings  # "" sends no header, like absent
    assert (blank.input.content_type, blank.output.accept) == (None, None)
    assert "printable ASCII" in only_problem(with_field(field, "text/csv\r\nX-Evil: 1"))[1]
    assert "at most 256" in only_problem(with_field(field, "a/" + "b" * 300))[1]


def test_kms_key_id() -> None:
    arn = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    assert parse(with_field("TransformOutput.KmsKeyId", arn)).settings.output.kms_key_id == arn
    assert parse(with_field("TransformOutput.KmsKeyId", "")).settings.output.kms_key_id is None
    assert only_problem(with_field("TransformOutput.KmsKeyId", "key id"))[0] == (
        "$.TransformOutput.KmsKeyId"
    )


# ---------------------------------------------------------------------- resources, processing


def test_instance_count() -> None:
    assert parse(with_field("TransformResources.InstanceCount", 8)).settings.instance_count == 8
    for bad in (0, -1, True, "2"):
        path, _ = only_problem(with_field("TransformResources.InstanceCount", bad))
        assert path == "$.TransformResources.InstanceCount"


def test_filters_are_kept_as_strings() -> None:
    document = with_field("DataProcessing", {"InputFilter": "$[1:]", "OutputFilter": "$['id']"})
    processing = parse(document).settings.data_processing
    assert (processing.input_filter, processing.output_filter) == ("$[1:]", "$['id']")


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("$." + "a" * 62, "at most 63"),
        ("[1:]", "starts with $"),
        ("", "starts with $"),
        (1, "string"),
    ],
)
def test_filters_rejected(value: Any, words: str) -> None:
    for key in ("InputFilter", "OutputFilter"):
        path, message = only_problem(with_field(f"DataProcessing.{key}", value))
        assert path == f"$.DataProcessing.{key}"
        assert words in message


# ---------------------------------------------------------------------- Agent


def test_agent_fields() -> None:
    agent = {
        "ModelUrl": "https://models.internal:8443/v1/",
        "ModelCommand": ["serve", "--port", "8080", ""],
        "ModelStartupTimeoutSeconds": 30,
        "StateUri": "s3://bkt/state/",
        "Coordination": "Lease",
        "ReorderBufferMB": 1,
    }
    settings = parse(with_field("Agent", agent)).settings
    assert settings.agent.model_url == "https://models.internal:8443/v1"
    assert settings.agent.model_command == ("serve", "--port", "8080", "")
    assert settings.agent.model_startup_timeout_seconds == 30
    assert settings.state_uri == DataUri("s3", "bkt", "state/")
    assert settings.agent.coordination == "Lease"
    assert settings.agent.reorder_buffer_bytes == 1 << 20


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("ModelUrl", "ftp://host/", "http:// or https://"),
        ("ModelUrl", "http://", "http:// or https://"),
        ("ModelUrl", "http://host:99999", "valid port"),
        ("ModelUrl", "http://host/?q=1", "query or fragment"),
        ("ModelUrl", "", "1 to 2048 characters"),
        ("ModelCommand", [], "found an empty array"),
        ("ModelCommand", "python -m server", "found a string"),
        ("ModelCommand", ["", "x"], "empty program name"),
        ("ModelStartupTimeoutSeconds", 0, "1 or more"),
        ("ReorderBufferMB", 0, "1 or more"),
        ("Coordination", "static", 'did you mean "Static"'),
    ],
)
def test_agent_rejected(key: str, value: Any, words: str) -> None:
    path, message = only_problem(with_field(f"Agent.{key}", value))
    assert path.startswith(f"$.Agent.{key}")
    assert words in message


def test_model_command_element_paths() -> None:
    found = problems(with_field("Agent.ModelCommand", ["serve", 8080, "a\x00b"]))
    assert set(found) == {"$.Agent.ModelCommand[1]", "$.Agent.ModelCommand[2]"}


def test_model_url_credentials_are_refused_without_echoing_them() -> None:
    path, message = only_problem(with_field("Agent.ModelUrl", f"http://user:{SECRET}@host/"))
    assert path == "$.Agent.ModelUrl"
    assert "credentials" in message and SECRET not in message


# ---------------------------------------------------------------------- keys and shape


@pytest.mark.parametrize(
    ("field", "path", "words"),
    [
        ("TransformJobNme", "$.TransformJobNme", 'did you mean "TransformJobName"'),
        ("TransformInput.Splittype", "$.TransformInput.Splittype", 'did you mean "SplitType"'),
        ("Agent.ModelURL", "$.Agent.ModelURL", 'did you mean "ModelUrl"'),
        ("DataProcessing.Junk", "$.DataProcessing.Junk", "allowed keys here are"),
        ("SplitType", "$.SplitType", "SplitType belongs under $.TransformInput"),
        ("InstanceType", "$.InstanceType", "InstanceType belongs under $.TransformResources"),
        ("ModelClientConfig.Retries", "$.ModelClientConfig.Retries", "InvocationsMaxRetries"),
        (
            f"{S3_DATA_SOURCE}.S3DataDistributionType",
            f"$.{S3_DATA_SOURCE}.S3DataDistributionType",
            "allowed keys here are S3DataType, S3Uri",
        ),
    ],
)
def test_unknown_keys_are_errors_at_every_level(field: str, path: str, words: str) -> None:
    found_path, message = only_problem(with_field(field, "x"))
    assert found_path == path
    assert message.startswith("unknown key")
    assert words in message


@pytest.mark.parametrize(
    "path",
    [
        "TransformJobName",
        "TransformInput",
        "TransformOutput",
        "TransformInput.DataSource",
        "TransformInput.DataSource.S3DataSource",
        f"{S3_DATA_SOURCE}.S3DataType",
        f"{S3_DATA_SOURCE}.S3Uri",
        "TransformOutput.S3OutputPath",
    ],
)
def test_required_fields(path: str) -> None:
    document = minimal()
    *parents, last = path.split(".")
    target = document
    for key in parents:
        target = target[key]
    del target[last]
    found_path, message = only_problem(document)
    assert found_path == "$." + path
    assert message.startswith("this required field is missing; ")


@pytest.mark.parametrize(
    "section",
    ["TransformInput", "TransformOutput", "Agent", "DataProcessing", "TransformResources"],
)
def test_sections_must_be_objects(section: str) -> None:
    path, message = only_problem(with_field(section, "s3://bkt/in/"))
    assert path == f"$.{section}"
    assert "expected an object, found a string" in message


@pytest.mark.parametrize("document", [[], "job", 3, None])
def test_document_must_be_an_object(document: object) -> None:
    path, message = only_problem(document)
    assert path == "$"
    assert "must hold one JSON object" in message


def test_all_problems_are_reported_at_once() -> None:
    document = minimal()
    document |= {"BatchStrategy": "Multi", "MaxPayloadInMB": 500, "Extra": 1}
    document["TransformInput"]["SplitType"] = 3
    del document["TransformOutput"]["S3OutputPath"]
    assert set(problems(document)) == {
        "$.BatchStrategy",
        "$.MaxPayloadInMB",
        "$.Extra",
        "$.TransformInput.SplitType",
        "$.TransformOutput.S3OutputPath",
    }


# ---------------------------------------------------------------------- warnings


def test_concurrency_times_payload_above_100_is_a_warning() -> None:
    document = minimal() | {"MaxConcurrentTransforms": 11, "MaxPayloadInMB": 10}
    (warning,) = parse(document).warnings
    assert "110" in warning
    assert parse(minimal() | {"MaxConcurrentTransforms": 10, "MaxPayloadInMB": 10}).warnings == ()
    assert parse(minimal() | {"MaxConcurrentTransforms": 50, "MaxPayloadInMB": 0}).warnings == ()


def test_batch_strategy_without_split_type_is_a_warning() -> None:
    (warning,) = parse(minimal() | {"BatchStrategy": "MultiRecord"}).warnings
    assert "SplitType None" in warning


# ---------------------------------------------------------------------- the file


def write(tmp_path: Path, content: bytes | str) -> Path:
    path = tmp_path / "job.json"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('{"TransformJobName": "a",\n  oops}', "is not valid JSON: Expecting property name"),
        ("", "is not valid JSON"),
        (b"\xff\xfe{}", "is not UTF-8 text"),
        ('{"MaxPayloadInMB": NaN}', "NaN is not a JSON value"),
        ("[" * 100_000, "nested too deeply"),
    ],
)
def test_unusable_files_get_one_clear_message(tmp_path: Path, content: Any, words: str) -> None:
    with pytest.raises(JobError) as caught:
        load_job(write(tmp_path, content))
    (problem,) = caught.value.problems
    assert problem.path == ""
    assert words in problem.message


def test_json_error_has_line_and_column(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="at line 2, column 3"):
        load_job(write(tmp_path, '{"TransformJobName": "a",\n  oops}'))


@pytest.mark.parametrize("make", ["missing", "directory"])
def test_unreadable_file(tmp_path: Path, make: str) -> None:
    path = tmp_path / "job.json"
    if make == "directory":
        path.mkdir()
    with pytest.raises(JobError, match="cannot read the job file .*job.json"):
        load_job(path)


def test_byte_order_mark_and_relative_paths(tmp_path: Path) -> None:
    document = with_field(f"{S3_DATA_SOURCE}.S3Uri", "in/")
    path = write(tmp_path, "\ufeff" + json.dumps(document))
    assert load_job(path, cwd="/srv").settings.input.uri == DataUri("file", "", "/srv/in/")


def test_duplicate_keys_are_errors_with_their_path(tmp_path: Path) -> None:
    text = json.dumps(minimal())[:-1] + ', "TransformJobName": "other", "Environment": '
    text += '{"A": "1", "A": "2"}}'
    with pytest.raises(JobError) as caught:
        load_job(write(tmp_path, text))
    paths = [problem.path for problem in caught.value.problems]
    assert paths == ["$.TransformJobName", "$.Environment.A"]
    assert "appears more than once" in caught.value.problems[0].message


# ---------------------------------------------------------------------- settings object


def test_settings_are_frozen() -> None:
    settings = parse(minimal()).settings
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.instance_count = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.agent.model_url = "http://x"  # type: ignore[misc]


def test_overrides_return_a_new_object() -> None:
    settings = parse(minimal()).settings
    changed = with_overrides(
        settings, model_url="http://10.0.0.5:9000/", state_uri="state/", instance_count=4, cwd="/w"
    )
    assert changed.agent.model_url == "http://10.0.0.5:9000"
    assert changed.state_uri == DataUri("file", "", "/w/state/")
    assert changed.instance_count == 4
    assert settings.agent.model_url == "http://127.0.0.1:8080" and settings.instance_count == 1
    assert with_overrides(settings) == settings


def test_bad_overrides_name_the_flags() -> None:
    settings = parse(minimal()).settings
    with pytest.raises(JobError) as caught:
        with_overrides(settings, model_url="localhost:8080", state_uri="gs://x/", instance_count=0)
    assert [problem.path for problem in caught.value.problems] == [
        "--model-url",
        "--state-uri",
        "--instance-count",
    ]


def test_uri_join_uses_exactly_one_slash() -> None:
    assert str(DataUri("s3", "b", "out/").join("/_x/", "j", directory=True)) == "s3://b/out/_x/j/"
    assert str(DataUri("s3", "b", "").join("a")) == "s3://b/a"
    assert str(DataUri("file", "", "/").join("a", "b")) == "file:///a/b"
    assert DataUri("s3", "b", "out").same_place(DataUri("s3", "b", "out/"))
    assert not DataUri("s3", "b", "out").same_place(DataUri("s3", "c", "out"))


def test_settings_hash_tracks_output_shaping_settings_only() -> None:
    base = parse(with_field("Environment", {"TOKEN": SECRET})).settings
    digest = settings_hash(base)
    assert digest == settings_hash(copy.deepcopy(base))
    assert SECRET not in json.dumps(output_settings(base))
    assert settings_hash(dataclasses.replace(base, instance_count=9)) == digest
    assert settings_hash(dataclasses.replace(base, transform_job_name="other")) == digest
    shaped = dataclasses.replace(base, input=dataclasses.replace(base.input, split_type="Line"))
    assert settings_hash(shaped) != digest
    assert settings_hash(dataclasses.replace(base, environment={"TOKEN": "new"})) != digest
    assert settings_hash(dataclasses.replace(base, max_payload_mb=6)) != digest


def test_settings_type_is_exported() -> None:
    assert isinstance(parse(minimal()).settings, JobSettings)


@pytest.mark.parametrize("uri", ["s3://bkt/manifests/", "s3://bkt", "/data/"])
def test_manifest_uri_names_an_object(uri: str) -> None:
    document = with_field(f"{S3_DATA_SOURCE}.S3Uri", uri)
    document["TransformInput"]["DataSource"]["S3DataSource"]["S3DataType"] = "ManifestFile"
    path, message = only_problem(document)
    assert path == f"$.{S3_DATA_SOURCE}.S3Uri"
    assert "names the manifest object itself" in message
