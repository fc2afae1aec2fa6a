"""The model client's pure parts: execution parameters, errors, backoff, settings."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from agent.job import JobSettings, parse_job
from agent.model.client import (
    RETRYABLE_ERRORS,
    ExecutionParametersError,
    ModelClient,
    ModelClientSettings,
    ModelExitedError,
    ModelNotReadyError,
    ResolvedParams,
    RetryableStatusError,
    StatusError,
    format_execution_parameters,
    resolve_execution_parameters,
)
from agent.model.environment import model_environment
from agent.model.execparams import DEFAULTS, parse_execution_parameters
from agent.model.policy import backoff_seconds, failure_reason, invocation_failure
from agent.model.process import ModelExit

WHAT = "s3://b/in/x.csv bytes 0-6291455"


def job(**top: Any) -> JobSettings:
    document: dict[str, Any] = {
        "TransformJobName": "unit",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/in/"}}
        },
        "TransformOutput": {"S3OutputPath": "s3://b/out/"},
        **top,
    }
    return parse_job(document).settings


# ----------------------------------------------------------------------------- resolution


def test_defaults_when_neither_the_job_nor_the_model_says() -> None:
    params, sources = resolve_execution_parameters(job(), None)
    assert params == DEFAULTS == ResolvedParams(1, 6, "MultiRecord")
    assert set(sources.values()) == {"default"}


def test_the_job_file_wins_over_the_model() -> None:
    model = {"MaxConcurrentTransforms": 8, "MaxPayloadInMB": 1, "BatchStrategy": "SINGLE_RECORD"}
    settings = job(MaxConcurrentTransforms=2, MaxPayloadInMB=0, BatchStrategy="MultiRecord")
    params, sources = resolve_execution_parameters(settings, model)
    assert params == ResolvedParams(2, 0, "MultiRecord")
    assert set(sources.values()) == {"job file"}


@pytest.mark.parametrize(
    ("spelling", "strategy"),
    [
        ("MULTI_RECORD", "MultiRecord"),
        ("SINGLE_RECORD", "SingleRecord"),
        ("MultiRecord", "MultiRecord"),
        ("SingleRecord", "SingleRecord"),
    ],
)
def test_the_model_fills_what_the_job_leaves_out(spelling: str, strategy: str) -> None:
    model = {"MaxConcurrentTransforms": 4, "MaxPayloadInMB": 0, "BatchStrategy": spelling}
    params, sources = resolve_execution_parameters(job(MaxPayloadInMB=3), model)
    assert params == ResolvedParams(4, 3, strategy)  # type: ignore[arg-type]
    assert sources == {
        "MaxConcurrentTransforms": "/execution-parameters",
        "MaxPayloadInMB": "job file",
        "BatchStrategy": "/execution-parameters",
    }


def test_zero_concurrency_and_nulls_from_the_model_count_as_absent() -> None:
    model = {"MaxConcurrentTransforms": 0, "MaxPayloadInMB": None, "Other": [1]}
    params, sources = resolve_execution_parameters(job(), model)
    assert params == DEFAULTS and set(sources.values()) == {"default"}


def test_a_job_of_zero_concurrency_asks_the_model() -> None:
    params, sources = resolve_execution_parameters(
        job(MaxConcurrentTransforms=0), {"MaxConcurrentTransforms": 5}
    )
    assert params.max_concurrent_transforms == 5
    assert sources["MaxConcurrentTransforms"] == "/execution-parameters"


def test_out_of_range_values_from_the_model_are_all_reported() -> None:
    model = {"MaxConcurrentTransforms": -1, "MaxPayloadInMB": 101, "BatchStrategy": "Batch"}
    with pytest.raises(ExecutionParametersError) as failed:
        resolve_execution_parameters(job(), model)
    message = str(failed.value)
    assert "MaxConcurrentTransforms = -1" in message
    assert "MaxPayloadInMB = 101 (expected an integer from 0 to 100" in message
    assert 'BatchStrategy = "Batch"' in message and "job file" in message


@pytest.mark.parametrize("value", [True, 2.0, "4", [4], {"n": 4}])
def test_wrong_types_from_the_model_are_errors(value: object) -> None:
    with pytest.raises(ExecutionParametersError, match="MaxConcurrentTransforms"):
        resolve_execution_parameters(job(), {"MaxConcurrentTransforms": value})


def test_values_the_job_overrides_are_not_checked() -> None:
    params, _ = resolve_execution_parameters(job(MaxPayloadInMB=1), {"MaxPayloadInMB": 500})
    assert params.max_payload_mb == 1


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b'"MultiRecord"', b"null"])
def test_answers_that_are_not_json_objects_count_as_absent(body: bytes) -> None:
    assert parse_execution_parameters(body) is None


def test_an_object_answer_is_decoded() -> None:
    assert parse_execution_parameters(b'{"MaxPayloadInMB": 2}') == {"MaxPayloadInMB": 2}


def test_the_log_line_names_values_and_sources() -> None:
    params, sources = resolve_execution_parameters(
        job(MaxConcurrentTransforms=4), {"BatchStrategy": "SINGLE_RECORD"}
    )
    assert format_execution_parameters(params, sources) == (
        "execution parameters: MaxConcurrentTransforms=4 (job file), "
        "MaxPayloadInMB=6 (default), BatchStrategy=SingleRecord (/execution-parameters)"
    )


def test_resolved_values_are_applied_to_the_settings() -> None:
    applied = ResolvedParams(3, 0, "SingleRecord").apply(job())
    assert (applied.max_concurrent_transforms, applied.max_payload_bytes) == (3, 0)
    assert applied.batch_strategy == "SingleRecord"


# ----------------------------------------------------------------------------- errors


def test_a_refused_request_names_batch_status_and_body() -> None:
    error = invocation_failure(WHAT, StatusError(400, "Bad Request", "bad row 7\n"), 1, 600)
    assert str(error) == (
        f"{WHAT}: the model refused the request with status 400 Bad Request, "
        "response body 'bad row 7\\n' (not retried: only 429 and 5xx answers are)"
    )
    assert (error.status, error.body_excerpt, error.attempts) == (400, "bad row 7\n", 1)


def test_a_retried_failure_says_how_often_it_was_tried() -> None:
    error = invocation_failure(WHAT, RetryableStatusError(503, "", "busy"), 4, 600)
    assert str(error) == (
        f"{WHAT}: the model request failed after 4 attempts: status 503, response body 'busy'"
    )


def test_a_timeout_suggests_the_setting() -> None:
    message = str(invocation_failure(WHAT, TimeoutError(), 2, 0.3))
    assert "no complete answer within 0.3 s" in message
    assert "InvocationsTimeoutInSeconds" in message


def test_client_errors_are_one_line() -> None:
    error = aiohttp.ClientPayloadError("Bad status line:\n  Expected HTTP/\n    ^")
    text = failure_reason(error, 1)
    assert text == "ClientPayloadError: Bad status line: Expected HTTP/ ^"
    assert failure_reason(aiohttp.ServerDisconnectedError(), 1).startswith(
        "ServerDisconnectedError"
    )


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (aiohttp.ServerDisconnectedError(), True),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), True),
        (aiohttp.ClientPayloadError("Response payload is not completed"), True),
        (aiohttp.ServerTimeoutError(), True),
        (TimeoutError(), True),
        (RetryableStatusError(429, "Too Many Requests", ""), True),
        (RetryableStatusError(500, "Internal Server Error", ""), True),
        (StatusError(400, "Bad Request", ""), False),
        (StatusError(413, "Payload Too Large", ""), False),
        (aiohttp.InvalidURL("x"), False),
    ],
)
def test_which_errors_are_retried(error: Exception, retryable: bool) -> None:
    assert isinstance(error, RETRYABLE_ERRORS) is retryable


# ----------------------------------------------------------------------------- backoff


def test_backoff_ceilings_double_up_to_the_cap() -> None:
    ceilings = [
        backoff_seconds(n, base_seconds=0.2, cap_seconds=1.0, rng=lambda: 1.0) for n in range(1, 6)
    ]
    assert ceilings == pytest.approx([0.2, 0.4, 0.8, 1.0, 1.0])


def test_backoff_has_full_jitter() -> None:
    assert backoff_seconds(3, base_seconds=0.2, cap_seconds=5, rng=lambda: 0.0) == 0.0
    delays = [backoff_seconds(2, base_seconds=0.2, cap_seconds=5) for _ in range(200)]
    assert all(0 <= delay <= 0.4 for delay in delays) and len(set(delays)) > 100


# ----------------------------------------------------------------------------- settings


def test_client_settings_come_from_the_job() -> None:
    settings = job(
        MaxConcurrentTransforms=5,
        ModelClientConfig={"InvocationsTimeoutInSeconds": 30, "InvocationsMaxRetries": 0},
        TransformInput={
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/in/"}},
            "ContentType": "application/jsonlines",
        },
        TransformOutput={"S3OutputPath": "s3://b/out/", "Accept": "application/json"},
    )
    config = ModelClientSettings.from_job(settings, retry_cap_seconds=1.0)
    assert (config.max_inflight, config.content_type, config.accept) == (
        5,
        "application/jsonlines",
        "application/json",
    )
    assert (config.invocations_timeout_seconds, config.invocations_max_retries) == (30.0, 0)
    assert config.retry_cap_seconds == 1.0
    unresolved = ModelClientSettings.from_job(job())
    assert (unresolved.max_inflight, unresolved.content_type, unresolved.accept) == (1, None, None)
    assert (unresolved.invocations_timeout_seconds, unresolved.invocations_max_retries) == (600, 3)


def test_model_environment_follows_the_job_file_only() -> None:
    base = {"PATH": "/bin", "SAGEMAKER_BATCH_STRATEGY": "SINGLE_RECORD", "SAGEMAKER_BATCH": "x"}
    env = model_environment(job(Environment={"K": "v"}, MaxPayloadInMB=2), base)
    assert env == {
        "PATH": "/bin",
        "K": "v",
        "SAGEMAKER_BATCH": "true",
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "2",
    }


# ----------------------------------------------------------------------------- a dead model


def test_exit_descriptions() -> None:
    assert ModelExit(3, "a\nb\n").explain("mid-job") == (
        "exited with status 3 mid-job; its last output:\na\nb"
    )
    assert ModelExit(-9, " \n").explain() == (
        "was killed by signal 9 (SIGKILL); it printed nothing"
    )


async def test_a_dead_model_fails_requests_without_a_connection() -> None:
    died: asyncio.Future[ModelExit] = asyncio.get_running_loop().create_future()
    died.set_result(ModelExit(137, "Killed\n"))
    async with ModelClient("http://127.0.0.1:9", died=died) as client:
        with pytest.raises(ModelExitedError) as failed:
            await client.invoke(b"x", what=WHAT)
        with pytest.raises(ModelNotReadyError, match="exited with status 137"):
            await client.wait_ready(60)
    assert str(failed.value).startswith(f"{WHAT}: the model command exited with status 137")
    assert failed.value.exit.tail == "Killed\n"


async def test_a_client_must_be_entered_first() -> None:
    with pytest.raises(RuntimeError, match="async with"):
        await ModelClient("http://127.0.0.1:9").invoke(b"x", what=WHAT)
