"""``Agent.ModelCommand``: started with the right variables, watched, and always stopped."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import textwrap
import time
from typing import Any

import pytest

from agent.job import JobSettings, parse_job
from agent.model.client import (
    ModelClient,
    ModelClientSettings,
    ModelExitedError,
    ModelNotReadyError,
)
from agent.model.environment import model_environment
from agent.model.process import ModelCommandError, ModelExit, ModelProcess
from tests.support.servers import REPO_ROOT, process_alive

pytestmark = [pytest.mark.integration, pytest.mark.twin_free]

PY = sys.executable
FAST = ModelClientSettings(ping_interval_seconds=0.1, retry_base_seconds=0.01)
HANG_GUARD_SECONDS = 60  # only so that a failing test ends; no assertion is about time


def job(**top: Any) -> JobSettings:
    document: dict[str, Any] = {
        "TransformJobName": "model-process-test",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/in/"}}
        },
        "TransformOutput": {"S3OutputPath": "s3://b/out/"},
        "Agent": {"ModelCommand": [PY, "-c", "pass"]},
        **top,
    }
    return parse_job(document).settings


def script(source: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(source)]


async def listening_url(model: ModelProcess, timeout: float = 30.0) -> str:
    """The URL the example server prints once it listens (it was started with --port 0)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"listening on (http://\S+)", model.tail())
        if found:
            return found.group(1)
        if model.died.done():
            raise AssertionError(model.died.result().explain())
        await asyncio.sleep(0.02)
    raise AssertionError(f"the server never said where it listens: {model.tail()}")


def example_server(*args: str) -> list[str]:
    return [PY, "-m", "examples.model_server", "--port", "0", *args]


# ----------------------------------------------------------------------------- environment

PRINT_ENV = script(
    """
    import json, os
    print(json.dumps({k: v for k, v in os.environ.items()
                      if k.startswith(("SAGEMAKER_", "BT_TEST_"))}), flush=True)
    """
)


async def env_seen_by(settings: JobSettings) -> dict[str, str]:
    async with ModelProcess(PRINT_ENV, env=model_environment(settings)) as model:
        exit = await asyncio.wait_for(model.died, 30)
    assert exit.returncode == 0 and not exit.stopped
    seen: dict[str, str] = json.loads(exit.tail)
    return seen


async def test_only_sagemaker_batch_when_the_job_sets_no_execution_parameters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", "1")  # the agent's own: not the job's
    monkeypatch.setenv("BT_TEST_INHERITED", "yes")  # not on the allow-list: not passed
    seen = await env_seen_by(job(Environment={"BT_TEST_SECRET": "s3cr3t"}))
    assert seen == {"SAGEMAKER_BATCH": "true", "BT_TEST_SECRET": "s3cr3t"}


async def test_the_execution_parameters_the_job_sets_are_passed() -> None:
    settings = job(MaxConcurrentTransforms=3, MaxPayloadInMB=0, BatchStrategy="SingleRecord")
    assert await env_seen_by(settings) == {
        "SAGEMAKER_BATCH": "true",
        "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "3",
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "0",
        "SAGEMAKER_BATCH_STRATEGY": "SINGLE_RECORD",
    }
    partial = await env_seen_by(job(BatchStrategy="MultiRecord", MaxConcurrentTransforms=0))
    assert partial == {"SAGEMAKER_BATCH": "true", "SAGEMAKER_BATCH_STRATEGY": "MULTI_RECORD"}


# ----------------------------------------------------------------------------- lifecycle


async def test_a_started_server_answers_and_is_stopped(caplog: pytest.LogCaptureFixture) -> None:
    async with ModelProcess(
        example_server(), env=model_environment(job()), cwd=str(REPO_ROOT)
    ) as model:
        url = await listening_url(model)
        async with ModelClient(url, FAST, died=model.died) as client:
            await client.wait_ready(30)
            assert await client.invoke(b"hello\n", what="x bytes 0-5") == b"hello\n"
        pid = model.pid
    assert not process_alive(pid)
    exit = model.died.result()
    assert exit.stopped and exit.returncode == 0  # it handled SIGTERM and ended cleanly
    assert "s3cr3t" not in caplog.text


async def test_a_command_that_exits_during_start_up_fails_the_wait_at_once() -> None:
    argv = script(
        """
        import sys, time
        print("loading model.tar.gz", flush=True)
        time.sleep(0.2)
        print("error: no such model file", file=sys.stderr, flush=True)
        sys.exit(4)
        """
    )
    async with ModelProcess(argv) as model:
        async with ModelClient("http://127.0.0.1:9", FAST, died=model.died) as client:
            with pytest.raises(ModelNotReadyError) as failed:
                async with asyncio.timeout(HANG_GUARD_SECONDS):  # the deadline is an hour away
                    await client.wait_ready(3600)
    message = str(failed.value)
    assert "within 3600 s" not in message  # ended by the exit, not by the deadline
    assert "exited with status 4" in message and "error: no such model file" in message
    assert failed.value.exit is not None and failed.value.exit.returncode == 4


async def test_a_command_that_dies_mid_job_fails_requests_fast() -> None:
    settings = ModelClientSettings(  # a backoff (full jitter) would last up to an hour
        ping_interval_seconds=0.1, retry_base_seconds=3600, retry_cap_seconds=3600, max_inflight=4
    )
    async with ModelProcess(
        example_server("--exit-after", "2", "--delay-ms", "300"), cwd=str(REPO_ROOT)
    ) as model:
        url = await listening_url(model)
        async with ModelClient(url, settings, died=model.died) as client:
            await client.wait_ready(30)
            assert await client.invoke(b"1\n", what="a.csv bytes 0-1") == b"1\n"
            async with asyncio.timeout(HANG_GUARD_SECONDS):  # not the retries with backoff
                results = await asyncio.gather(
                    *(client.invoke(b"%d\n" % n, what=f"a.csv batch {n}") for n in range(6)),
                    return_exceptions=True,
                )
            failures = [r for r in results if isinstance(r, ModelExitedError)]
            assert failures and all(isinstance(r, bytes | ModelExitedError) for r in results)
            assert "exited with status 3" in str(failures[0])
            assert "exiting after 2 invocations" in str(failures[0])
            # Once dead, every later request fails at once too.
            with pytest.raises(ModelExitedError):
                await client.invoke(b"late\n", what="b.csv bytes 0-4")


async def test_a_command_that_is_not_there_is_a_clear_error() -> None:
    with pytest.raises(ModelCommandError, match="cannot start Agent.ModelCommand 'no-such-srv'"):
        async with ModelProcess(["no-such-srv", "--port", "8080"]):
            pass


CHILDREN = script(
    """
    import signal, subprocess, sys, time
    if "--stubborn" in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
            for _ in range(2)]
    print("pids", *[k.pid for k in kids], flush=True)
    time.sleep(300)
    """
)


async def child_pids(model: ModelProcess) -> list[int]:
    for _ in range(500):
        found = re.search(r"pids (\d+) (\d+)", model.tail())
        if found:
            return [int(found.group(1)), int(found.group(2))]
        await asyncio.sleep(0.02)
    raise AssertionError(model.tail())


@pytest.mark.parametrize("stubborn", [False, True], ids=["polite", "ignores-sigterm"])
async def test_stop_ends_the_whole_group(stubborn: bool, caplog: pytest.LogCaptureFixture) -> None:
    argv = CHILDREN + (["--stubborn"] if stubborn else [])
    with caplog.at_level(logging.WARNING, logger="agent.model_process"):
        async with ModelProcess(argv, grace_seconds=0.5) as model:
            pids = [model.pid, *await child_pids(model)]
            assert all(process_alive(pid) for pid in pids)
    assert not any(process_alive(pid) for pid in pids)
    exit = model.died.result()
    assert exit.stopped and exit.returncode == (-9 if stubborn else -15)
    assert "killed by signal" in exit.explain()
    # SIGTERM ends a polite group; a stubborn one gets SIGKILL once the grace period is out
    # (its children sleep for minutes: they were killed, not waited for).
    killing = [r.getMessage() for r in caplog.records if "ignored SIGTERM" in r.getMessage()]
    assert killing == (
        [f"the model command (pid {model.pid}) ignored SIGTERM for 0.5 s; killing it"]
        if stubborn
        else []
    )


async def test_cancellation_stops_the_command() -> None:
    ready = asyncio.Event()
    pids: list[int] = []

    async def job_body() -> None:
        async with ModelProcess(CHILDREN, grace_seconds=5) as model:
            pids.extend([model.pid, *await child_pids(model)])
            ready.set()
            await asyncio.sleep(300)

    task = asyncio.create_task(job_body())
    await asyncio.wait_for(ready.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(pids) == 3 and not any(process_alive(pid) for pid in pids)


def test_exit_descriptions() -> None:
    assert ModelExit(3, "boom\n").explain("mid-job") == (
        "exited with status 3 mid-job; its last output:\nboom"
    )
    assert ModelExit(-9, "").explain() == "was killed by signal 9 (SIGKILL); it printed nothing"
