"""Hostile job values: secrets and control characters kept out of errors and log lines, and
the ``Agent.MaxResponseMB`` field that caps a model's answer (its rule and its range)."""

from __future__ import annotations

import io
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.cli.app import main
from agent.job import JobError, JobSettings, parse_job, with_overrides
from agent.model.client import ModelClientSettings

SECRET = "tok-9b1e77c0aa5f4d2e"
MIB = 1 << 20


def document(**agent: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "TransformJobName": "hostile",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://bkt/in/"}}
        },
        "TransformOutput": {"S3OutputPath": "s3://bkt/out/"},
    }
    if agent:
        job["Agent"] = agent
    return job


def problems(job: dict[str, Any]) -> dict[str, str]:
    """JSON path -> message of every problem; fails if the job is valid."""
    with pytest.raises(JobError) as caught:
        parse_job(job, cwd="/work")
    return {problem.path: problem.message for problem in caught.value.problems}


def settings(job: dict[str, Any]) -> JobSettings:
    return parse_job(job, cwd="/work").settings


# ----------------------------------------------------------------------------- defect 10


@pytest.mark.parametrize(
    "url",
    [
        f"http://127.0.0.1:8080/?token={SECRET}",
        f"http://127.0.0.1:8080/invocations?x=1&token={SECRET}",
        f"http://127.0.0.1:8080/#{SECRET}",
        f"ftp://127.0.0.1/?token={SECRET}",  # a bad scheme as well: still not repeated
        f"http://127.0.0.1:99999/?token={SECRET}",
        f"127.0.0.1:8080?token={SECRET}",
        f"user:{SECRET}@127.0.0.1:8080",  # no scheme, so no netloc: still a password
        f"http://127.0.0.1:8080/?token={SECRET}" + "a" * 3000,  # too long as well
    ],
)
def test_a_model_url_error_never_repeats_its_query_fragment_or_password(url: str) -> None:
    found = problems(document(ModelUrl=url))
    assert list(found) == ["$.Agent.ModelUrl"]
    assert SECRET not in found["$.Agent.ModelUrl"]


def test_a_model_url_query_is_named_as_such_without_its_value() -> None:
    found = problems(document(ModelUrl=f"http://127.0.0.1:8080/?token={SECRET}"))
    message = found["$.Agent.ModelUrl"]
    assert "query or fragment" in message and "not repeated" in message
    assert SECRET not in message


def test_the_model_url_flag_error_never_repeats_its_query() -> None:
    with pytest.raises(JobError) as caught:
        with_overrides(settings(document()), model_url=f"http://127.0.0.1:9/?token={SECRET}")
    (problem,) = caught.value.problems
    assert problem.path == "--model-url" and SECRET not in problem.message


def test_validate_prints_no_token(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_bytes(orjson.dumps(document(ModelUrl=f"http://127.0.0.1:8080/?token={SECRET}")))
    err = io.StringIO()
    with redirect_stderr(err):
        assert main(["validate", "--job", str(path)]) == 2
    assert "$.Agent.ModelUrl" in err.getvalue() and SECRET not in err.getvalue()


CONTROLS = ["\n", "\r", "\t", "\x1b", "\x7f", "\x85", "\u2028"]


def _with(path: str, value: str) -> dict[str, Any]:
    job = document()
    if path == "S3Uri":
        job["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] = value
    elif path == "S3OutputPath":
        job["TransformOutput"]["S3OutputPath"] = value
    elif path == "ModelCommand":
        job["Agent"] = {"ModelCommand": [value, "--port", "8080"]}
    else:
        job["Agent"] = {path: value}
    return job


FIELDS = {
    "ModelUrl": ("http://127.0.0.1:8080{}/v1", "$.Agent.ModelUrl"),
    "S3Uri": ("s3://bkt/in{}/", "$.TransformInput.DataSource.S3DataSource.S3Uri"),
    "S3OutputPath": ("s3://bkt/out{}/", "$.TransformOutput.S3OutputPath"),
    "StateUri": ("s3://bkt/state{}/", "$.Agent.StateUri"),
    "ModelCommand": ("serve{}", "$.Agent.ModelCommand[0]"),
}


@pytest.mark.parametrize("char", CONTROLS, ids=[f"U+{ord(c):04X}" for c in CONTROLS])
@pytest.mark.parametrize("field", list(FIELDS))
def test_a_control_character_is_refused_at_its_json_path(field: str, char: str) -> None:
    template, path = FIELDS[field]
    value = template.format(char + "INFO forged line")
    found = problems(_with(field, value))
    assert list(found) == [path]
    message = found[path]
    assert f"U+{ord(char):04X}" in message and "control character" in message
    assert char not in message  # the message itself cannot split a log line


@pytest.mark.parametrize("char", ["\n", "\x1b"])
def test_a_control_character_in_a_local_path_is_refused(char: str) -> None:
    job = document()
    job["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] = f"/data/in{char}x/"
    job["TransformOutput"]["S3OutputPath"] = f"file:///data/out{char}x/"
    found = problems(job)
    assert set(found) == {
        "$.TransformInput.DataSource.S3DataSource.S3Uri",
        "$.TransformOutput.S3OutputPath",
    }


@pytest.mark.parametrize(
    ("flag", "value"), [("model_url", "http://h:1\nX"), ("state_uri", "s3://b/s\n")]
)
def test_a_control_character_in_a_flag_is_refused(flag: str, value: str) -> None:
    with pytest.raises(JobError) as caught:
        with_overrides(settings(document()), **{flag: value})
    (problem,) = caught.value.problems
    assert problem.path == "--" + flag.replace("_", "-")
    assert "U+000A" in problem.message and "\n" not in problem.message


def test_only_the_program_name_of_model_command_is_refused_a_newline() -> None:
    """Arguments are never logged (only their count), so a script may span lines."""
    command = ["python", "-c", "import sys\nprint(sys.argv)"]
    assert settings(document(ModelCommand=command)).agent.model_command == tuple(command)
    found = problems(document(ModelCommand=["python\n", "-c", "import sys\nprint(1)"]))
    assert list(found) == ["$.Agent.ModelCommand[0]"]


# ----------------------------------------------------------------------------- defect 4


@pytest.mark.parametrize(
    ("payload_mb", "expected_mb"),
    [(None, 64), (1, 64), (6, 64), (16, 64), (17, 68), (100, 400), (0, 400)],
)
def test_the_answer_cap_defaults_to_a_multiple_of_the_payload_bound(
    payload_mb: int | None, expected_mb: int
) -> None:
    job = document()
    if payload_mb is not None:
        job["MaxPayloadInMB"] = payload_mb
    loaded = settings(job)
    assert loaded.agent.max_response_mb is None
    assert loaded.max_response_bytes == expected_mb * MIB
    assert ModelClientSettings.from_job(loaded).max_response_bytes == expected_mb * MIB


@pytest.mark.parametrize("value", [1, 8, 16_384])
def test_max_response_mb_is_taken_as_set(value: int) -> None:
    job = document(MaxResponseMB=value)
    job["MaxPayloadInMB"] = 100
    loaded = settings(job)
    assert loaded.agent.max_response_mb == value
    assert loaded.max_response_bytes == value * MIB
    assert ModelClientSettings.from_job(loaded).max_response_bytes == value * MIB


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (0, "from 1 to 16384"),
        (16_385, "from 1 to 16384"),
        (-1, "from 1 to 16384"),
        ("64", "expected an integer"),
        (6.5, "expected an integer"),
        (True, "expected an integer"),
        (None, "expected an integer"),
    ],
)
def test_max_response_mb_out_of_range_is_refused(value: object, words: str) -> None:
    found = problems(document(MaxResponseMB=value))
    assert list(found) == ["$.Agent.MaxResponseMB"]
    assert words in found["$.Agent.MaxResponseMB"]


def test_max_response_mb_misplaced_says_where_it_belongs() -> None:
    job = document()
    job["MaxResponseMB"] = 64
    found = problems(job)
    assert "$.Agent" in found["$.MaxResponseMB"]


def test_the_example_job_sets_max_response_mb() -> None:
    example = Path(__file__).resolve().parents[3] / "examples" / "job.json"
    raw = orjson.loads(example.read_bytes())
    assert raw["Agent"]["MaxResponseMB"] == 64
    assert settings(raw).agent.max_response_mb == 64


@pytest.mark.parametrize(
    ("agent", "shown"),
    [({}, "answers up to max(64, 4 × MaxPayloadInMB) MiB"), ({"MaxResponseMB": 8}, "up to 8 MiB")],
)
def test_validate_shows_the_answer_cap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], agent: dict[str, Any], shown: str
) -> None:
    path = tmp_path / "job.json"
    path.write_bytes(orjson.dumps(document(**agent)))
    assert main(["validate", "--job", str(path)]) == 0
    assert shown in capsys.readouterr().out
