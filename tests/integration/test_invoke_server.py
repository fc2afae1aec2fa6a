"""The model client against the real example model server (docs/design.md §1.7)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from agent.job import JobSettings, parse_job
from agent.model.client import (
    InvocationError,
    ModelClient,
    ModelClientSettings,
    ModelNotReadyError,
    resolve_execution_parameters,
)
from tests.support.servers import ModelServer

pytestmark = pytest.mark.integration

WHAT = "s3://b/in/x.csv bytes 0-99"
FAST = {"retry_base_seconds": 0.01, "retry_cap_seconds": 0.05}


def settings(**changes: Any) -> ModelClientSettings:
    return ModelClientSettings(**{**FAST, **changes})


def job(**top: Any) -> JobSettings:
    document: dict[str, Any] = {
        "TransformJobName": "invoke-test",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/in/"}}
        },
        "TransformOutput": {"S3OutputPath": "s3://b/out/"},
        **top,
    }
    return parse_job(document).settings


async def idle(model: ModelServer) -> None:
    """Wait until requests an earlier test abandoned have left the server, then reset it."""
    for _ in range(100):
        model.reset()
        if model.log()["max_in_flight"] == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the model server stayed busy")


def headers(entry: dict[str, Any]) -> dict[str, str]:
    return {name.lower(): value for name, value in entry["headers"]}


# ----------------------------------------------------------------------------- headers


async def test_unset_content_type_and_accept_are_not_sent(model: ModelServer) -> None:
    async with ModelClient(model.url, settings()) as client:
        assert await client.invoke(b"a,b\n", what=WHAT) == b"a,b\n"
        assert await client.invoke(bytearray(b"x" * (3 << 20)), what=WHAT) == b"x" * (3 << 20)
    for entry in model.requests():
        sent = headers(entry)
        assert "content-type" not in sent and "accept" not in sent
        assert "accept-encoding" not in sent
        assert sent["user-agent"].startswith("bt-agent/")


async def test_set_content_type_and_accept_are_sent_exactly(model: ModelServer) -> None:
    config = ModelClientSettings.from_job(
        job(
            TransformInput={
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/in/"}},
                "ContentType": "text/csv",
            },
            TransformOutput={"S3OutputPath": "s3://b/out/", "Accept": "application/jsonlines"},
        ),
        **FAST,
    )
    async with ModelClient(model.url, config) as client:
        await client.invoke(memoryview(b"1,2\n"), what=WHAT)
    (entry,) = model.requests()
    sent = [(name.lower(), value) for name, value in entry["headers"]]
    assert [v for n, v in sent if n == "content-type"] == ["text/csv"]
    assert [v for n, v in sent if n == "accept"] == ["application/jsonlines"]


# ----------------------------------------------------------------------------- /ping, params


async def test_wait_ready_rides_out_a_slow_start(model: ModelServer) -> None:
    model.control(ping_fail_seconds=0.6)
    async with ModelClient(model.url, settings(ping_interval_seconds=0.1)) as client:
        await client.wait_ready(10)
    answers = [entry["answer"] for entry in model.requests("/ping")]
    assert answers[-1] == 200 and 503 in answers and answers.count(200) == 1


async def test_wait_ready_gives_up_at_the_deadline(model: ModelServer) -> None:
    model.control(ping_fail_seconds=60)
    async with ModelClient(model.url, settings(ping_interval_seconds=0.1)) as client:
        with pytest.raises(ModelNotReadyError) as failed:
            await client.wait_ready(0.5)
    message = str(failed.value)
    assert model.url in message and "within 0.5 s" in message and "status 503" in message
    # Given up at the deadline, not later: no ping starts after it (one every 0.1 s at most).
    answers = [entry["answer"] for entry in model.requests("/ping")]
    assert 1 <= len(answers) <= 0.5 / 0.1 + 1 and set(answers) == {503}, answers


async def test_wait_ready_names_a_server_that_is_not_there(
    model_server_factory: Callable[..., ModelServer],
) -> None:
    gone = model_server_factory()
    url = gone.url
    gone.stop()
    async with ModelClient(url, settings(ping_interval_seconds=0.1)) as client:
        with pytest.raises(ModelNotReadyError, match="ClientConnectorError"):
            await client.wait_ready(0.3)


async def test_execution_parameters_fill_only_what_the_job_leaves_out(model: ModelServer) -> None:
    model.control(
        execution_parameters={
            "MaxConcurrentTransforms": 4,
            "MaxPayloadInMB": 2,
            "BatchStrategy": "SINGLE_RECORD",
        }
    )
    async with ModelClient(model.url, settings()) as client:
        answer = await client.execution_parameters()
    params, sources = resolve_execution_parameters(job(MaxPayloadInMB=6), answer)
    assert (params.max_concurrent_transforms, params.max_payload_mb) == (4, 6)
    assert params.batch_strategy == "SingleRecord"
    assert sources == {
        "MaxConcurrentTransforms": "/execution-parameters",
        "MaxPayloadInMB": "job file",
        "BatchStrategy": "/execution-parameters",
    }


async def test_no_execution_parameters_means_defaults(model: ModelServer) -> None:
    async with ModelClient(model.url, settings()) as client:
        assert await client.execution_parameters() is None  # the server answers 404


# ----------------------------------------------------------------------------- faults


async def test_a_500_once_is_retried(model: ModelServer, caplog: pytest.LogCaptureFixture) -> None:
    model.control(fault="status", status=500, fault_count=1)
    with caplog.at_level(logging.WARNING, logger="agent.invoke"):
        async with ModelClient(model.url, settings()) as client:
            assert await client.invoke(b"row\n", what=WHAT) == b"row\n"
    assert [entry["answer"] for entry in model.requests()] == [500, 200]
    assert "attempt 1/4" in caplog.text and WHAT in caplog.text


async def test_429_is_retried_until_the_retries_run_out(model: ModelServer) -> None:
    model.control(fault="status", status=429)
    async with ModelClient(model.url, settings(invocations_max_retries=2)) as client:
        with pytest.raises(InvocationError) as failed:
            await client.invoke(b"row\n", what=WHAT)
    assert len(model.requests()) == 3
    assert failed.value.status == 429 and failed.value.attempts == 3
    assert "after 3 attempts" in str(failed.value) and WHAT in str(failed.value)


async def test_a_400_fails_at_once_with_the_body_excerpt(model: ModelServer) -> None:
    model.control(fault="status", status=400)
    async with ModelClient(model.url, settings()) as client:
        with pytest.raises(InvocationError) as failed:
            await client.invoke(b"row\n", what=WHAT)
    assert len(model.requests()) == 1
    message = str(failed.value)
    assert WHAT in message and "status 400 Bad Request" in message
    assert "fault: status 400" in message and failed.value.body_excerpt == "fault: status 400\n"


async def test_a_slow_answer_times_out_each_attempt(
    model_server_factory: Callable[..., ModelServer],
) -> None:
    model = model_server_factory("--delay-ms", "600000")  # private: its answers never come
    config = settings(invocations_timeout_seconds=0.3, invocations_max_retries=1)
    began = time.monotonic()
    async with ModelClient(model.url, config) as client:
        with pytest.raises(InvocationError, match=r"no complete answer within 0.3 s") as failed:
            await client.invoke(b"row\n", what=WHAT)
        abandoned = model.requests()  # read before the client closes its connections
    assert time.monotonic() - began >= 0.6  # each attempt had its whole timeout (a minimum)
    assert failed.value.attempts == 2 and isinstance(failed.value.__cause__, TimeoutError)
    # Each attempt was given up by its timeout, not ended by an answer: the second arrived
    # while the first was still being answered, and the call failed with both unanswered.
    assert len(abandoned) == 2 and [entry["in_flight"] for entry in abandoned] == [1, 2]
    assert [entry["done"] for entry in abandoned] == [None, None]


@pytest.mark.parametrize("fault", ["reset", "truncated", "malformed"])
async def test_broken_answers_are_retried(model: ModelServer, fault: str) -> None:
    model.control(fault=fault, fault_count=1)
    body = b"0123456789\n" * 1000
    async with ModelClient(model.url, settings()) as client:
        assert await client.invoke(body, what=WHAT) == body
    assert len(model.requests()) == 2


async def test_broken_answers_every_time_fail_naming_the_error(model: ModelServer) -> None:
    model.control(fault="malformed")
    async with ModelClient(model.url, settings(invocations_max_retries=1)) as client:
        with pytest.raises(InvocationError, match="ClientResponseError") as failed:
            await client.invoke(b"row\n", what=WHAT)
    assert failed.value.status is None and "\n" not in str(failed.value)


# ----------------------------------------------------------------------------- streaming


async def test_a_streamed_body_is_chunked_and_reopened_for_a_retry(model: ModelServer) -> None:
    model.control(fault="status", status=503, fault_count=1)
    pieces = [bytes([65 + n]) * 70_000 for n in range(5)]
    opened = closed = 0

    def source() -> AsyncIterator[bytes]:
        async def stream() -> AsyncIterator[bytes]:
            nonlocal opened, closed
            opened += 1
            try:
                for piece in pieces:
                    await asyncio.sleep(0)
                    yield piece
            finally:
                closed += 1

        return stream()

    async with ModelClient(model.url, settings()) as client:
        assert await client.invoke(source, what=WHAT) == b"".join(pieces)
    assert (opened, closed) == (2, 2)
    first, second = model.requests()
    assert headers(first)["transfer-encoding"] == "chunked" and "content-length" not in (
        headers(first)
    )
    digest = hashlib.sha256(b"".join(pieces)).hexdigest()
    assert first["body_sha256"] == second["body_sha256"] == digest


async def test_a_failing_source_is_not_retried(model: ModelServer) -> None:
    def source() -> AsyncIterator[bytes]:
        async def stream() -> AsyncIterator[bytes]:
            yield b"x" * 1000
            raise OSError("the input object changed while it was read")

        return stream()

    async with ModelClient(model.url, settings()) as client:
        with pytest.raises(OSError, match="changed while it was read"):
            await client.invoke(source, what=WHAT)
    assert len(model.requests()) == 0  # the server never got a whole body


# ----------------------------------------------------------------------------- concurrency


async def test_requests_in_flight_are_bounded(model: ModelServer) -> None:
    await idle(model)
    model.control(delay_ms=50)
    async with ModelClient(model.url, settings(max_inflight=8)) as client:
        answers = await asyncio.gather(
            *(client.invoke(b"%d\n" % n, what=f"batch {n}") for n in range(40))
        )
    assert answers == [b"%d\n" % n for n in range(40)]
    assert model.log()["max_in_flight"] == 8


async def test_the_model_is_kept_busy(model: ModelServer) -> None:
    # Uneven answer times, as real ones are: a slot freed is taken again at once. (With
    # equal times the requests move in waves of 8, and arrivals see 1, 2, ... 8.)
    await idle(model)
    model.control(delay_ms=25, random_delay_ms=50)
    async with ModelClient(model.url, settings(max_inflight=8)) as client:
        await asyncio.gather(*(client.invoke(b"x", what=f"batch {n}") for n in range(48)))
    log = model.log()
    arrivals = [entry["in_flight"] for entry in log["requests"]][8:]  # after the ramp-up
    assert log["max_in_flight"] == 8 and sum(arrivals) / len(arrivals) > 6.5
