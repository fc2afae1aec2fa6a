"""Model servers that answer too much: every body the agent reads from the model is bounded.

The servers are real HTTP servers on 127.0.0.1 (``bench.answer_size.HostileModel``) that
make their bytes on the fly and count what they managed to send, so a test sees that the
agent stopped reading, not only that it failed. Whole jobs run as ``python -m agent``
subprocesses on local inputs and outputs; the client-level cases drive ``ModelClient``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from agent.model import client as invoke
from agent.model.client import ModelClient, ModelClientSettings
from bench.answer_size import ENDLESS, Answer, HostileModel
from tests.support.runjob import AgentRun, local_outputs, run_agent, transform_job

pytestmark = pytest.mark.integration

MIB = 1 << 20
GIB = 1 << 30
SLACK = 16 * MIB  # what socket buffers may take in after the agent stops reading
SLOW = 64 * MIB  # bytes per second: what an unbounded read of the old agent would pile up
RECORDS = b"1,2,3\n" * 10
OK = Answer(size=2, prefix=b"OK")
NONE = Answer(status=404)
ECHO = Answer(echo=True)
FAST = {"retry_base_seconds": 0.01, "retry_cap_seconds": 0.05}


def run_job(tmp_path: Path, model: HostileModel, **fields: Any) -> tuple[AgentRun, Path, Path]:
    """One file of ten CSV records through ``model``; the run, its input and output dirs."""
    source, output = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    (source / "x.csv").write_bytes(RECORDS)
    agent = {"ModelStartupTimeoutSeconds": 10, **fields.pop("agent", {})}
    job = transform_job(
        "hostile", str(source), str(output), model_url=model.url, agent=agent, **fields
    )
    return run_agent(job, tmp_path, timeout=120), source, output


def peak_mib(run: AgentRun) -> float:
    assert run.summary is not None, run.explain()
    return int(run.summary["PeakRSSBytes"]) / MIB


# ----------------------------------------------------------------------------- /invocations


def test_an_answer_over_the_default_cap_fails_its_file_unread(tmp_path: Path) -> None:
    """MaxPayloadInMB 1: the cap is the default 64 MiB; a 256 MiB answer stops at it."""
    answers = {"/ping": OK, "/execution-parameters": NONE}
    answers["/invocations"] = Answer(size=256 * MIB, chunked=True)
    with HostileModel(answers) as model:
        run, source, output = run_job(tmp_path, model, max_payload_mb=1)
    assert run.returncode == 1 and run.status == "Failed", run.explain()
    reason = run.file(f"file://{source}/x.csv")["FailureReason"]
    assert f"file://{source}/x.csv bytes [0, {len(RECORDS)})" in reason, reason
    assert "64 MiB" in reason and str(64 * MIB) in reason and "Agent.MaxResponseMB" in reason
    assert "not retried" in reason
    assert model.requests["/invocations"] == 1  # the same answer would come again
    assert model.sent["/invocations"] < 64 * MIB + SLACK
    assert peak_mib(run) < 64 + 160, run.explain()
    assert local_outputs(output) == {}  # nothing partial is presented


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_an_answer_of_the_cap_is_written_whole_and_one_byte_more_fails(
    tmp_path: Path, chunked: bool
) -> None:
    cap = 4 * MIB
    for size, status in ((cap, "Completed"), (cap + 1, "Failed")):
        answers = {"/ping": OK, "/execution-parameters": NONE}
        answers["/invocations"] = Answer(size=size, chunked=chunked)
        place = tmp_path / str(size)
        place.mkdir()
        with HostileModel(answers) as model:
            run, _, output = run_job(place, model, agent={"MaxResponseMB": 4})
        assert run.status == status, run.explain()
        if status == "Completed":
            assert [len(data) for data in local_outputs(output).values()] == [cap]
        else:
            (entry,) = run.summary["Files"] if run.summary else []
            seen = f"at least {cap + 1} bytes arrived" if chunked else f"is {cap + 1} bytes"
            assert seen in entry["FailureReason"]
            assert local_outputs(output) == {}


def test_a_content_length_over_the_cap_fails_before_the_body_is_read(tmp_path: Path) -> None:
    answers = {"/ping": OK, "/execution-parameters": NONE}
    answers["/invocations"] = Answer(size=GIB, rate_bytes_per_second=SLOW)
    with HostileModel(answers) as model:
        run, source, _ = run_job(tmp_path, model, agent={"MaxResponseMB": 8})
    assert run.returncode == 1 and run.status == "Failed", run.explain()
    reason = run.file(f"file://{source}/x.csv")["FailureReason"]
    assert f"Content-Length is {GIB} bytes" in reason and "8 MiB" in reason, reason
    assert model.requests["/invocations"] == 1
    assert model.sent["/invocations"] < SLACK


async def test_the_client_reads_no_more_than_the_cap() -> None:
    """At the client: exactly the cap is returned whole, one byte more is refused unretried."""
    cap = 1 * MIB
    for chunked in (False, True):
        answers = {"/invocations": Answer(size=cap, chunked=chunked)}
        with HostileModel(answers) as model:
            config = ModelClientSettings(max_response_bytes=cap, **FAST)
            async with ModelClient(model.url, config) as client:
                data = await client.invoke(b"x", what="s3://b/in/x.csv bytes [0, 1)")
            assert len(data) == cap and data[:16] == b"0123456789abcdef"
        answers = {"/invocations": Answer(size=ENDLESS, chunked=chunked)}
        with HostileModel(answers) as model:
            async with ModelClient(model.url, config) as client:
                with pytest.raises(invoke.ResponseTooLargeError) as failed:
                    await client.invoke(b"x", what="s3://b/in/x.csv bytes [0, 1)")
            assert model.requests["/invocations"] == 1
            assert model.sent["/invocations"] < cap + SLACK
        error = failed.value
        assert error.cap_bytes == cap and error.attempts == 1
        assert str(error).startswith("s3://b/in/x.csv bytes [0, 1): ")


# ----------------------------------------------------------------------------- /ping


def test_an_endless_ping_body_does_not_keep_the_model_from_being_ready(tmp_path: Path) -> None:
    answers = {"/execution-parameters": NONE, "/invocations": ECHO}
    answers["/ping"] = Answer(size=ENDLESS, chunked=True, rate_bytes_per_second=SLOW)
    with HostileModel(answers) as model:
        run, _, output = run_job(tmp_path, model, agent={"ModelStartupTimeoutSeconds": 5})
    assert run.returncode == 0 and run.status == "Completed", run.explain()
    assert list(local_outputs(output).values()) == [RECORDS]
    assert model.sent["/ping"] < SLACK


def test_an_endless_ping_body_with_503_still_times_out(tmp_path: Path) -> None:
    answers = {"/invocations": ECHO}
    answers["/ping"] = Answer(status=503, size=ENDLESS, chunked=True, rate_bytes_per_second=SLOW)
    with HostileModel(answers) as model:
        run, _, _ = run_job(tmp_path, model, agent={"ModelStartupTimeoutSeconds": 3})
    assert run.returncode == 1 and run.status == "Failed", run.explain()
    assert "did not answer 200 within 3 s" in run.log and "last answer: status 503" in run.log
    assert model.requests["/ping"] >= 2  # polled again and again, each ping bounded
    assert model.sent["/ping"] < SLACK * model.requests["/ping"]
    assert peak_mib(run) < 160, run.explain()


# ----------------------------------------------------------------------------- params


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_a_huge_execution_parameters_body_is_taken_as_absent(tmp_path: Path, chunked: bool) -> None:
    huge = Answer(
        size=ENDLESS if chunked else 8 * GIB,
        chunked=chunked,
        prefix=b'{"MaxPayloadInMB": 1, "pad": "',
        rate_bytes_per_second=SLOW,
    )
    answers = {"/ping": OK, "/execution-parameters": huge, "/invocations": ECHO}
    with HostileModel(answers) as model:
        run, _, output = run_job(tmp_path, model)
    assert run.returncode == 0 and run.status == "Completed", run.explain()
    assert "GET /execution-parameters answered more than 64 KiB" in run.log, run.log
    assert "taken as absent" in run.log
    assert run.summary is not None
    assert run.summary["ExecutionParameters"]["MaxPayloadInMB"] == 6  # the default, not 1
    assert list(local_outputs(output).values()) == [RECORDS]
    assert model.sent["/execution-parameters"] < SLACK


async def test_execution_parameters_of_exactly_64_kib_are_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    start = b'{"MaxPayloadInMB": 2}'
    padded = start + b" " * (invoke.EXECUTION_PARAMETERS_MAX_BYTES - len(start))
    settings = ModelClientSettings(**FAST)
    with HostileModel({"/execution-parameters": Answer(size=len(padded), prefix=padded)}) as model:
        async with ModelClient(model.url, settings) as client:
            assert await client.execution_parameters() == {"MaxPayloadInMB": 2}
    over = start + b" " * (invoke.EXECUTION_PARAMETERS_MAX_BYTES + 1 - len(start))
    with HostileModel({"/execution-parameters": Answer(size=len(over), prefix=over)}) as model:
        async with ModelClient(model.url, settings) as client:
            with caplog.at_level(logging.WARNING, logger="agent.invoke"):
                assert await client.execution_parameters() is None
    assert "more than 64 KiB" in caplog.text
