"""``bt-agent --job job.json --model model.json`` with a container image and no
``ModelCommand`` (README "Replicas", "A killed agent and its containers"): no container
engine runs on this machine, so a stand-in ``docker`` first on PATH
(``tests/support/fake_engine.py``) checks the argv it gets and becomes the example model
server. Asserted: the exact command a real engine would get for each of two replicas on
two GPUs, the artifacts in the mount, and the stop by name."""

from __future__ import annotations

import io
import signal
import tarfile
import time
from pathlib import Path

import orjson
import pytest

from tests.support import fake_engine
from tests.support.processes import HOST, free_port_block
from tests.support.runjob import run_agent, start_agent, transform_job
from tests.support.servers import process_alive

pytestmark = pytest.mark.integration

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/echo:1"


def artifacts(path: Path) -> None:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("model.pth")
        info.size = 7
        tar.addfile(info, io.BytesIO(b"weights"))


def test_two_replicas_run_in_containers_on_two_gpus(tmp_path: Path) -> None:
    engine = fake_engine.install(tmp_path / "engine")
    engine_log = tmp_path / "engine.jsonl"
    source = tmp_path / "in"
    source.mkdir()
    rows = b"".join(b"%d,abc\n" % i for i in range(2_000))
    for n in range(4):
        (source / f"part-{n}.csv").write_bytes(rows)
    artifacts(tmp_path / "model.tar.gz")
    model = {
        "ModelName": "echo",
        "PrimaryContainer": {
            "Image": IMAGE,
            "ModelDataUrl": str(tmp_path / "model.tar.gz"),
            "Environment": {"SAGEMAKER_PROGRAM": "inference.py", "SHARED": "model"},
        },
    }
    (tmp_path / "model.json").write_bytes(orjson.dumps(model))
    port = free_port_block(2) + 1
    job = transform_job(
        "containers",
        f"{source}/",
        str(tmp_path / "out"),
        model_url=f"http://{HOST}:{port}",
        split_type="Line",
        assemble_with="Line",
        max_payload_mb=1,
        agent={
            "ModelReplicas": 2,
            "ReplicaDevices": ["0", "1"],
            "ContainerRuntime": "docker",
            "ModelDir": str(tmp_path / "model-dir"),
        },
    )
    job["Environment"] = {"SHARED": "job"}

    run = run_agent(
        job,
        tmp_path,
        env=fake_engine.engine_environment(engine, engine_log),
        args=["--model", str(tmp_path / "model.json")],
        timeout=90,
    )

    assert (run.returncode, run.status) == (0, "Completed"), run.explain()
    for n in range(4):  # the example server echoes: each output is its input
        assert (tmp_path / "out" / f"part-{n}.csv.out").read_bytes() == rows
    calls = fake_engine.calls(engine_log)
    # In replica order: each fake engine process logs its call as it starts, so two
    # started one after the other may log in either order.
    started = sorted((call for call in calls if "run" in call), key=lambda call: call["run"])
    assert len(started) == 2, calls
    mount = str((tmp_path / "model-dir").resolve())
    for replica, call in enumerate(started):
        env = dict(call["env"])
        assert call["image"] == IMAGE and call["mount"] == mount
        assert call["model_files"] == [".bt-agent-artifacts.json", "model.pth"]
        assert call["devices"] == [f"device={replica}"]
        assert env["SAGEMAKER_BIND_TO_PORT"] == str(port + replica)
        assert env["SAGEMAKER_PROGRAM"] == "inference.py" and env["SHARED"] == "job"
        assert "CUDA_VISIBLE_DEVICES" not in env  # the engine's flag chooses the GPU
        assert call["run"].startswith("bt-agent-containers-") and call["run"].endswith(
            f"-r{replica}"
        )
    removed = [call["rm"] for call in calls if "rm" in call]
    assert sorted(removed) == sorted(call["run"] for call in started)
    assert not any(process_alive(call["pid"]) for call in started)
    assert "-e SAGEMAKER_PROGRAM" in run.log and "inference.py" not in run.log


def test_a_stopped_run_removes_its_containers_by_name(tmp_path: Path) -> None:
    engine = fake_engine.install(tmp_path / "engine")
    engine_log = tmp_path / "engine.jsonl"
    source = tmp_path / "in"
    source.mkdir()
    # One request a record: long enough to be stopped in the middle.
    (source / "a.csv").write_bytes(b"".join(b"%d,abc\n" % i for i in range(50_000)))
    (tmp_path / "model.json").write_bytes(
        orjson.dumps({"ModelName": "echo", "PrimaryContainer": {"Image": IMAGE}})
    )
    port = free_port_block(2) + 1
    job = transform_job(
        "containers-stop",
        f"{source}/",
        str(tmp_path / "out"),
        model_url=f"http://{HOST}:{port}",
        split_type="Line",
        batch_strategy="SingleRecord",
        agent={"ModelReplicas": 2, "ModelDir": str(tmp_path / "model-dir")},
    )
    agent = start_agent(
        job,
        tmp_path,
        env=fake_engine.engine_environment(engine, engine_log),
        args=["--model", str(tmp_path / "model.json")],
    )
    try:
        deadline = time.monotonic() + 60
        while "files (" not in agent.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        agent.signal(signal.SIGTERM)
        run = agent.wait(60)
    finally:
        agent.kill()

    assert run.returncode == 143, run.explain()
    calls = fake_engine.calls(engine_log)
    started = [call for call in calls if "run" in call]
    assert len(started) == 2
    assert sorted(call["rm"] for call in calls if "rm" in call) == sorted(
        call["run"] for call in started
    )
    assert not any(process_alive(call["pid"]) for call in started)
    assert not (tmp_path / "out" / "a.csv.out").exists()
