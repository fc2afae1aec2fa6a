"""Hostile use of the model process, secrets and the command line (issue 10: 6, 9, 11, 12).

* 9: the model's environment is an allow-list of the agent's variables plus the job's; the
  redactor replaces every written form of a secret in log lines, state objects and the
  summary, and leaves short values and identifiers alone.
* 11: a lone surrogate in any string of the job is refused at validation, with its path.
* 12: ``--summary`` is checked before the run.
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.cli.app import main, summary_path_problem
from agent.coordination.state import dumps
from agent.job import JobError, JobSettings, parse_job
from agent.log import setup_logging
from agent.model.environment import model_environment
from agent.redact import MASK, Redactor, install, scrub_state, secrets_of

SECRET = "SUPERSECRET123"
AWKWARD = 'pa"ss\\wörd€\n42'  # a quote, a backslash, non-ASCII and a control character


def document(**top: Any) -> dict[str, Any]:
    return {
        "TransformJobName": "hostile",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/in/"}}
        },
        "TransformOutput": {"S3OutputPath": "s3://b/out/"},
        **top,
    }


def settings(**top: Any) -> JobSettings:
    return parse_job(document(**top)).settings


@pytest.fixture
def redactor() -> Any:
    """Install a redactor of SECRET and AWKWARD; the default (none) again afterwards."""
    installed = Redactor([SECRET, AWKWARD, "true", "INFO"])
    install(installed)
    yield installed
    install(Redactor())


# ----------------------------------------------------------------------------- 9: environment


def test_the_model_gets_only_allowed_variables_of_the_agent_and_never_credentials() -> None:
    agent_env = {
        "PATH": "/usr/bin",
        "HOME": "/home/u",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "CUDA_VISIBLE_DEVICES": "0",
        "SM_CURRENT_HOST": "algo-1",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "wJalrEXAMPLEKEY",
        "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEXAMPLE",
        "AWS_PROFILE": "prod",
        "GITHUB_TOKEN": "ghp_example",
        "SAGEMAKER_API_TOKEN": "not-for-the-model",
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "1",  # the agent's own: only the job's count
        "HTTP_PROXY": "http://user:pw@proxy:3128",
        "RANDOM_THING": "x",
    }
    env = model_environment(settings(Environment={"API_TOKEN": SECRET}), agent_env)
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/home/u",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "CUDA_VISIBLE_DEVICES": "0",
        "SM_CURRENT_HOST": "algo-1",
        "API_TOKEN": SECRET,  # the job's own Environment: the model asked for it
        "SAGEMAKER_BATCH": "true",
    }


def test_secrets_are_the_environment_values_and_the_agents_credentials() -> None:
    found = secrets_of(
        {"API_TOKEN": SECRET, "MODE": "fast"},
        {
            "AWS_SECRET_ACCESS_KEY": "wJalrEXAMPLEKEY",
            "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEXAMPLE",
            "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",  # an identifier, not redacted
            "DB_PASSWORD": "hunter22",
            "PATH": "/usr/bin",
        },
    )
    assert sorted(found) == sorted(
        [SECRET, "fast", "wJalrEXAMPLEKEY", "FwoGZXIvYXdzEXAMPLE", "hunter22"]
    )


# ----------------------------------------------------------------------------- 9: redaction


def test_every_written_form_of_a_secret_is_replaced() -> None:
    redact = Redactor([SECRET, AWKWARD])
    for form in (
        SECRET,
        AWKWARD,
        repr(AWKWARD)[1:-1],
        json.dumps(AWKWARD)[1:-1],
        orjson.dumps(AWKWARD).decode()[1:-1],
    ):
        assert redact.text(f"before {form} after") == f"before {MASK} after"
    line = orjson.dumps({"message": f"env {AWKWARD} and {SECRET}"}).decode()
    scrubbed = redact.json_text(line)
    assert orjson.loads(scrubbed) == {"message": f"env {MASK} and {MASK}"}


def test_short_values_are_left_alone() -> None:
    redact = Redactor(["1", "true", "INFO", "gzip5"])
    assert not redact.active
    assert redact.text("1 true INFO gzip5") == "1 true INFO gzip5"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_log_lines_are_scrubbed(log_format: str, redactor: Redactor) -> None:
    stream = io.StringIO()
    logger = setup_logging(log_format, stream=stream)  # type: ignore[arg-type]
    try:
        logging.getLogger("agent.test").error(
            "the model said %s / %r", SECRET, {"k": AWKWARD}, extra={"file": f"x{SECRET}"}
        )
        try:
            raise RuntimeError(f"boom {SECRET}")
        except RuntimeError:
            logging.getLogger("agent.test").exception("failed")
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
    text = stream.getvalue()
    assert SECRET not in text and "SUPERSECRET" not in text
    assert "ss\\\\w" not in text and 'pa\\"ss' not in text and 'pa"ss' not in text
    assert MASK in text
    if log_format == "json":
        for row in text.splitlines():
            if row.startswith("{"):
                orjson.loads(row)  # still valid JSON


def test_state_objects_lose_secrets_in_free_text_only(redactor: Redactor) -> None:
    record = {
        "Format": 1,
        "Input": f"s3://b/in/{SECRET}.csv",  # an identifier: looked up again, kept exactly
        "Status": "Failed",
        "FailureReason": f"the model command exited; its last output:\n{{'API_TOKEN': {SECRET!r}}}",
        "Files": [{"Input": "s3://b/x", "FailureReason": f"x {AWKWARD!r}"}],
    }
    stored = orjson.loads(dumps(record))
    assert stored["Input"] == record["Input"]
    assert SECRET not in stored["FailureReason"] and MASK in stored["FailureReason"]
    assert "ss\\\\w" not in stored["Files"][0]["FailureReason"]
    for quoted in (repr(AWKWARD), json.dumps(AWKWARD), repr({"k": AWKWARD})):
        reason = orjson.loads(dumps({"Format": 1, "FailureReason": f"said {quoted}"}))[
            "FailureReason"
        ]
        # every form of AWKWARD spells "wörd" (or "w\u00f6rd"): none may be left
        assert "wörd" not in reason and "w\\u00f6rd" not in reason and MASK in reason, reason
    untouched = {"Format": 1, "Files": [{"Key": "a"}] * 3}
    assert scrub_state(untouched) is untouched  # nothing to hide: not walked, not copied


# ----------------------------------------------------------------------------- 11: surrogates


@pytest.mark.parametrize(
    ("path", "patch"),
    [
        (
            "$.TransformInput.DataSource.S3DataSource.S3Uri",
            lambda d: d["TransformInput"]["DataSource"]["S3DataSource"].update(
                S3Uri="s3://b/in\ud800/"
            ),
        ),
        (
            "$.TransformOutput.S3OutputPath",
            lambda d: d["TransformOutput"].update(S3OutputPath="s3://b/\udfffout/"),
        ),
        ("$.Agent.ModelCommand[0]", lambda d: d.update(Agent={"ModelCommand": ["py\ud800"]})),
        ("$.Agent.StateUri", lambda d: d.update(Agent={"StateUri": "s3://b/st\ud800/"})),
        ("$.Environment.API_TOKEN", lambda d: d.update(Environment={"API_TOKEN": "ab\udc80cd"})),
        ('$.Environment["K\\ud800"]', lambda d: d.update(Environment={"K\ud800": "v"})),
        ("$.Tags[0].Value", lambda d: d.update(Tags=[{"Key": "k", "Value": "\ud800"}])),
    ],
    ids=["S3Uri", "S3OutputPath", "ModelCommand", "StateUri", "env-value", "env-key", "tag"],
)
def test_a_lone_surrogate_anywhere_is_refused_with_its_path(path: str, patch: Any) -> None:
    job = document()
    patch(job)
    with pytest.raises(JobError) as refused:
        parse_job(job)
    problems = {problem.path: problem.message for problem in refused.value.problems}
    assert path in problems, refused.value
    assert "unpaired surrogate" in problems[path]
    assert "abcd" not in str(refused.value) and "ab\udc80cd" not in str(refused.value)


def test_a_lone_surrogate_in_a_job_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = document(Environment={"API_TOKEN": "SECRET\ud800VALUE"})
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))  # ensure_ascii: the file holds the escape \ud800
    assert main(["validate", "--job", str(path)]) == 2
    err = capsys.readouterr().err
    assert "$.Environment.API_TOKEN" in err and "unpaired surrogate" in err
    assert "SECRET" not in err


# ----------------------------------------------------------------------------- 12: --summary


def test_a_summary_path_that_cannot_be_written_is_found_before_the_run(tmp_path: Path) -> None:
    assert summary_path_problem(None) is None
    assert summary_path_problem(str(tmp_path / "s.json")) is None
    assert "is a directory" in str(summary_path_problem(str(tmp_path)))
    missing = summary_path_problem(str(tmp_path / "no" / "s.json"))
    assert missing is not None and "does not exist" in missing
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert "not writable" in str(summary_path_problem(str(locked / "s.json")))


def test_run_refuses_an_unwritable_summary_with_exit_2_touching_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in"
    source.mkdir()
    (source / "a.csv").write_bytes(b"1\n")
    job = document()
    job["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] = str(source)
    job["TransformOutput"]["S3OutputPath"] = str(tmp_path / "out")
    job["Agent"] = {"ModelUrl": "http://127.0.0.1:9"}  # nothing there: never reached
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    for summary in (tmp_path / "missing" / "s.json", tmp_path):
        code = main(["--job", str(path), "--summary", str(summary)])
        assert code == 2
        assert f"--summary {summary}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
