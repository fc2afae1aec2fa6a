"""The model's container, run through a stand-in engine (``tests/support/fake_engine.py``).

No container engine runs here, so a ``docker`` (and ``podman``) script first on PATH checks
the argv it is given and becomes the example model server, as a container would: so the
exact command a real engine gets is asserted, and so is the stop by name.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.job import JobSettings, parse_job
from agent.model.client import ModelClient, ModelClientSettings
from agent.model.container import (
    container_environment,
    container_name,
    find_runtime,
    run_argv,
    stop_container,
)
from agent.model.process import ModelProcess
from tests.support import fake_engine
from tests.support.servers import free_port_block, process_alive

pytestmark = [pytest.mark.integration, pytest.mark.twin_free]

FAST = ModelClientSettings(ping_interval_seconds=0.1, retry_base_seconds=0.01)
HANG_GUARD_SECONDS = 60  # only so that a failing test ends; no assertion is about time
SECRET = "container-s3cr3t-value"


def job() -> JobSettings:
    document: dict[str, Any] = {
        "TransformJobName": "container-engine-test",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/in/"}}
        },
        "TransformOutput": {"S3OutputPath": "s3://b/out/"},
        "Environment": {"SHARED": "job", "API_TOKEN": SECRET},
        "MaxConcurrentTransforms": 2,
    }
    return parse_job(document).settings


def server_environment(pid: int) -> dict[str, str]:
    """The environment the process ``pid`` was started with (it is our own user's)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(entry.split("=", 1) for entry in raw.decode().split("\0") if entry)


@pytest.mark.parametrize(
    ("engine", "device", "device_flags"),
    [
        ("docker", "0,1", ["--gpus", '"device=0,1"']),
        ("podman", "1", ["--device", "nvidia.com/gpu=1"]),
    ],
)
async def test_the_container_gets_the_exact_argv_serves_and_is_removed_by_name(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    engine: str,
    device: str,
    device_flags: list[str],
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent")
    bin_dir = fake_engine.install(tmp_path / "bin")
    log = tmp_path / "engine.jsonl"
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "weights.bin").write_bytes(b"\0" * 16)
    engine_env = fake_engine.engine_environment(bin_dir, log)
    runtime = find_runtime(engine, engine_env["PATH"])
    assert runtime == str(bin_dir / engine)

    port = free_port_block(1) + 1
    name = container_name("container-engine-test", 1)
    env = container_environment(job(), {"MODEL_ONLY": "m", "SHARED": "model"}, port=port)
    argv = run_argv(runtime, name, "acme/model:1", str(model_dir), env, device=device)

    async with asyncio.timeout(HANG_GUARD_SECONDS):
        async with ModelProcess(argv, env=engine_env, grace_seconds=5) as model:
            url = f"http://127.0.0.1:{port}"
            async with ModelClient(url, FAST, died=model.died) as client:
                await client.wait_ready(30)
                assert await client.invoke(b"hello\n", what="x bytes 0-5") == b"hello\n"
            [run] = fake_engine.calls(log)
            server_pid = run["pid"]
            assert server_pid == model.model_pid  # the engine became the server: same pid
            assert process_alive(server_pid)
            # The server got the -e variables as its whole environment, as a container's.
            assert server_environment(server_pid) == dict(run["env"])
            # Stopped by name while it runs, as at the end of a run: rm -f ends the server.
            await stop_container(runtime, name, timeout=30, env=engine_env)
            exit = await model.died
            assert not exit.stopped  # it ended by the rm, not by the process's own stop
        await stop_container(
            runtime, name, timeout=30, env=engine_env
        )  # gone now: no error is raised

    assert run["engine"] == engine
    assert run["argv"] == [
        "run",
        "--rm",
        "--name",
        name,
        "--network",
        "host",
        "-v",
        f"{model_dir}:/opt/ml/model:ro",
        "-e",
        "MODEL_ONLY=m",
        "-e",
        "SHARED=job",
        "-e",
        f"API_TOKEN={SECRET}",
        "-e",
        "SAGEMAKER_BATCH=true",
        "-e",
        "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS=2",
        "-e",
        f"SAGEMAKER_BIND_TO_PORT={port}",
        *device_flags,
        "acme/model:1",
        "serve",
    ]
    assert run["image"] == "acme/model:1" and run["model_files"] == ["weights.bin"]
    removals = [call for call in fake_engine.calls(log) if "rm" in call]
    assert [(call["argv"], call["known"]) for call in removals] == [
        (["rm", "-f", name], True),
        (["rm", "-f", name], False),
    ]
    assert removals[0]["running"] is True and removals[0]["pid"] == server_pid
    assert not process_alive(server_pid)
    assert not fake_engine.pid_file(bin_dir, name).exists()
    assert SECRET not in caplog.text


async def test_removing_a_container_that_is_gone_or_an_engine_that_fails_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent")
    bin_dir = fake_engine.install(tmp_path / "bin")
    env = fake_engine.engine_environment(bin_dir, tmp_path / "engine.jsonl")
    await stop_container(str(bin_dir / "docker"), "bt-agent-none-0-r0", timeout=30, env=env)
    missing = str(tmp_path / "missing" / "docker")
    await stop_container(missing, "bt-agent-x-r0", timeout=30, env=env)
    hung = tmp_path / "hung" / "docker"
    hung.parent.mkdir()
    hung.write_text("#!/bin/sh\nexec sleep 600\n")
    hung.chmod(0o755)
    async with asyncio.timeout(HANG_GUARD_SECONDS):
        await stop_container(str(hung), "bt-agent-y-r0", timeout=0.2, env=env)
    assert [record.levelname for record in caplog.records] == ["DEBUG", "WARNING", "WARNING"]
    assert "already gone" in caplog.records[0].getMessage()
    assert "could not remove the model's container bt-agent-x-r0" in caplog.text
    assert "did not finish in 0.2 s" in caplog.records[2].getMessage()
    assert "ps --filter name=bt-agent-y-r0" in caplog.records[2].getMessage()
    # Cancelled while the engine hangs: the engine is killed, the cancellation goes on.
    async with asyncio.timeout(HANG_GUARD_SECONDS):
        while _hung_engines():  # the engine timed out above is killed but perhaps not gone
            await asyncio.sleep(0.01)
    task = asyncio.create_task(stop_container(str(hung), "bt-agent-z-r0", timeout=600, env=env))
    try:
        async with asyncio.timeout(HANG_GUARD_SECONDS):
            while not _hung_engines():
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert "was cancelled" in caplog.records[-1].getMessage()
        assert not _hung_engines()
    finally:
        for pid in _hung_engines():  # only if the test failed: leave nothing behind
            os.kill(pid, signal.SIGKILL)


def _hung_engines() -> list[int]:
    """The pids of this process's children running ``sleep 600`` (the hung engine)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except (OSError, ValueError):
                continue
            if int(fields[1]) == os.getpid() and fields[0] != "Z" and b"600" in command:
                found.append(int(entry.name))
    return found


GOOD = ["--rm", "--name", "c1", "--network", "host"]


@pytest.mark.parametrize(
    ("engine", "tail", "reason"),
    [
        ("docker", ["-e", "A=1", "img", "serve"], "expected -v"),
        ("docker", ["-v", "model:/opt/ml/model:ro", "-e", "P=1", "img", "serve"], "bad mount"),
        ("docker", ["-v", "{dir}:/opt/ml/model", "img", "serve"], "bad mount"),
        ("docker", ["-v", "{dir}:/opt/ml/model:ro", "-e", "A", "img", "serve"], "bad -e"),
        ("docker", ["-v", "{dir}:/opt/ml/model:ro", "--device", "x", "img", "serve"], "IMAGE"),
        ("podman", ["-v", "{dir}:/opt/ml/model:ro", "--gpus", "x", "img", "serve"], "IMAGE"),
        ("docker", ["-v", "{dir}:/opt/ml/model:ro", "img"], "IMAGE serve"),
        ("docker", ["-v", "{dir}:/opt/ml/model:ro", "img", "serve"], "SAGEMAKER_BIND_TO_PORT"),
    ],
)
def test_the_stand_in_refuses_an_argv_a_real_engine_would_not_get(
    tmp_path: Path, engine: str, tail: list[str], reason: str
) -> None:
    bin_dir = fake_engine.install(tmp_path / "bin")
    log = tmp_path / "engine.jsonl"
    argv = [str(bin_dir / engine), "run", *GOOD, *(p.format(dir=tmp_path) for p in tail)]
    env = fake_engine.engine_environment(bin_dir, log)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 125, done.stderr
    assert reason in done.stderr
    [call] = fake_engine.calls(log)
    assert reason in call["refused"]
