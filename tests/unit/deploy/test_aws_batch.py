"""deploy/aws-batch: both request bodies validated against botocore's own Batch service model
(the shapes the AWS CLI and SDKs check before sending), and the facts the agent depends on.

No Batch runs here. ``ParamValidator`` reports unknown keys, missing required keys, wrong
types and enum values by path; the tests at the end break each file on purpose to show that.
The retry rules are evaluated the way Batch documents them (first matching rule; a job no
rule matches is retried), for each exit code the agent has (README, "Exit codes").
"""

from __future__ import annotations

import copy
import fnmatch
from typing import Any

import botocore.session
import pytest
from botocore.validate import ParamValidator

from agent.cli.app import main as agent_main
from tests.support.deploy import DEPLOY, json_file

DIRECTORY = DEPLOY / "aws-batch"
REQUESTS = {"job-definition.json": "RegisterJobDefinition", "submit-job.json": "SubmitJob"}


def batch_model() -> Any:
    return botocore.session.get_session().get_service_model("batch")


def problems(operation: str, body: Any) -> str:
    """botocore's report on ``body`` as ``operation``'s input, and any string outside its
    shape's enum, which botocore leaves to the service ('' when valid)."""
    shape = batch_model().operation_model(operation).input_shape
    report = ParamValidator().validate(body, shape)
    lines = report.generate_report().splitlines() if report.has_errors() else []
    return "\n".join(lines + enum_problems(body, shape, ""))


def enum_problems(value: Any, shape: Any, path: str) -> list[str]:
    """Strings not among their shape's enum values, by path, at every depth."""
    if shape.type_name == "structure" and isinstance(value, dict):
        return [
            problem
            for key, item in value.items()
            if key in shape.members
            for problem in enum_problems(item, shape.members[key], f"{path}.{key}".lstrip("."))
        ]
    if shape.type_name == "list" and isinstance(value, list):
        return [
            problem
            for index, item in enumerate(value)
            for problem in enum_problems(item, shape.member, f"{path}[{index}]")
        ]
    if shape.type_name == "map" and isinstance(value, dict):
        return [
            problem
            for key, item in value.items()
            for problem in enum_problems(item, shape.value, f"{path}.{key}")
        ]
    if shape.type_name == "string" and shape.enum and value not in shape.enum:
        return [f"Invalid value for parameter {path}, value: {value}, one of: {shape.enum}"]
    return []


def definition() -> dict[str, Any]:
    return json_file(DIRECTORY / "job-definition.json")


def submission() -> dict[str, Any]:
    return json_file(DIRECTORY / "submit-job.json")


def test_the_directory_holds_the_recipe() -> None:
    assert sorted(path.name for path in DIRECTORY.iterdir()) == [
        "README.md",
        "job-definition.json",
        "job.json",
        "submit-job.json",
    ]


@pytest.mark.parametrize(("name", "operation"), REQUESTS.items())
def test_each_file_is_a_valid_request_body(name: str, operation: str) -> None:
    assert problems(operation, json_file(DIRECTORY / name)) == ""


def test_the_array_has_one_child_per_instance_of_the_job_file() -> None:
    job = json_file(DIRECTORY / "job.json")
    assert submission()["arrayProperties"]["size"] == job["TransformResources"]["InstanceCount"]
    assert submission()["jobDefinition"] == definition()["jobDefinitionName"]


def test_the_container_runs_the_agent_on_the_baked_in_job_file() -> None:
    container = definition()["containerProperties"]
    assert container["command"] == ["--job", "/etc/bt-agent/job.json"]  # ENTRYPOINT bt-agent
    resources = {entry["type"]: entry["value"] for entry in container["resourceRequirements"]}
    assert resources == {"VCPU": "4", "MEMORY": "16384", "GPU": "1"}
    assert definition()["platformCapabilities"] == ["EC2"]  # GPUs need EC2, not Fargate
    assert definition()["timeout"] == {"attemptDurationSeconds": 43200}
    job = json_file(DIRECTORY / "job.json")
    assert job["Agent"]["ModelCommand"] == ["serve"]  # the model runs in the same container


def test_the_job_file_is_valid_for_the_agent(capsys: pytest.CaptureFixture[str]) -> None:
    assert agent_main(["validate", "--job", str(DIRECTORY / "job.json")]) == 0
    assert "valid transform job bt-agent-batch" in capsys.readouterr().out


# ----------------------------------------------------------------------------- retries


def decision(rules: list[dict[str, str]], exit_code: int | None, status_reason: str) -> str:
    """What Batch does with a failed attempt: the action of the first rule whose every
    condition matches (a pattern may end with ``*``), else RETRY."""
    for rule in rules:
        tests = {
            "onExitCode": "" if exit_code is None else str(exit_code),
            "onStatusReason": status_reason,
            "onReason": "",
        }
        conditions = [(key, rule[key]) for key in tests if key in rule]
        if all(fnmatch.fnmatchcase(tests[key], pattern) for key, pattern in conditions):
            return rule["action"]
    return "RETRY"


def test_batch_documents_that_a_failure_no_rule_matches_is_retried() -> None:
    shape = batch_model().operation_model("RegisterJobDefinition").input_shape
    documentation = shape.members["retryStrategy"].members["evaluateOnExit"].documentation
    assert "If none of the listed conditions match, then the job is retried." in documentation


@pytest.mark.parametrize(
    ("exit_code", "status_reason", "action"),
    [
        (2, "Essential container in task exited", "EXIT"),  # usage error: never fixes itself
        (1, "Essential container in task exited", "RETRY"),  # a file failed: rerun resumes
        (143, "Essential container in task exited", "RETRY"),  # SIGTERM: stopped
        (137, "Essential container in task exited", "RETRY"),  # SIGKILL: stop timeout, OOM
        (143, "Host EC2 (instance i-0123456789abcdef0) terminated.", "RETRY"),  # spot reclaim
        (None, "Host EC2 (instance i-0123456789abcdef0) terminated.", "RETRY"),
        (2, "Host EC2 (instance i-0123456789abcdef0) terminated.", "RETRY"),  # host went first
    ],
)
def test_the_retry_rules_for_each_exit_code(
    exit_code: int | None, status_reason: str, action: str
) -> None:
    strategy = definition()["retryStrategy"]
    assert strategy["attempts"] == 3
    assert decision(strategy["evaluateOnExit"], exit_code, status_reason) == action


# ----------------------------------------------------------------------------- the check fails


def _definition_with(change: Any) -> dict[str, Any]:
    body = copy.deepcopy(definition())
    change(body)
    return body


BROKEN = [
    (
        "misspelt-deep-key",
        "RegisterJobDefinition",
        _definition_with(lambda d: d["retryStrategy"]["evaluateOnExit"][1].update(onExitCod="2")),
        'Unknown parameter in retryStrategy.evaluateOnExit[1]: "onExitCod"',
    ),
    (
        "wrong-type",
        "RegisterJobDefinition",
        _definition_with(lambda d: d["timeout"].update(attemptDurationSeconds="43200")),
        "Invalid type for parameter timeout.attemptDurationSeconds, value: 43200",
    ),
    (
        "string-for-list",
        "RegisterJobDefinition",
        _definition_with(lambda d: d["containerProperties"].update(command="--job x")),
        "Invalid type for parameter containerProperties.command, value: --job x",
    ),
    (
        "bad-enum",
        "RegisterJobDefinition",
        _definition_with(
            lambda d: d["containerProperties"]["resourceRequirements"][2].update(type="GPUS")
        ),
        "Invalid value for parameter containerProperties.resourceRequirements[2].type, value: GPUS",
    ),
    (
        "unknown-top-key",
        "SubmitJob",
        {**submission(), "arrayProperty": {"size": 4}},
        'Unknown parameter in input: "arrayProperty"',
    ),
    (
        "bad-action",
        "RegisterJobDefinition",
        _definition_with(lambda d: d["retryStrategy"]["evaluateOnExit"][1].update(action="STOP")),
        "Invalid value for parameter retryStrategy.evaluateOnExit[1].action, value: STOP",
    ),
    (
        "missing-required",
        "SubmitJob",
        {key: value for key, value in submission().items() if key != "jobQueue"},
        'Missing required parameter in input: "jobQueue"',
    ),
]


@pytest.mark.parametrize(
    ("operation", "body", "expected"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN]
)
def test_a_broken_request_body_fails_naming_the_path(
    operation: str, body: dict[str, Any], expected: str
) -> None:
    report = problems(operation, body)
    assert expected in report, report
    assert "\n" not in report, report  # that problem only
