"""Model replicas end to end (README "Replicas"): ``Agent.ModelReplicas`` copies of the
example model server started through ``Agent.ModelCommand`` with ``{port}``, servers
already running listed in ``Agent.ModelUrl``, a replica killed mid-job and restarted, and
a run that fails once every replica is gone. Inputs and outputs are local files; every
model server is a real process on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.processes import HOST, free_port_block
from tests.support.runjob import model_command, run_agent, start_agent, transform_job
from tests.support.servers import ModelServer, process_alive

pytestmark = [pytest.mark.integration, pytest.mark.twin_free]

LINES = 40_000
CONCURRENCY = 2


def write_inputs(tmp_path: Path, files: int = 6) -> dict[str, bytes]:
    source = tmp_path / "in"
    source.mkdir()
    written = {}
    for n in range(files):
        data = b"".join(b"%d,%s\n" % (i, b"v" * (i % 17)) for i in range(LINES + n))
        (source / f"part-{n}.csv").write_bytes(data)
        written[f"part-{n}.csv.out"] = b"".join(b"%d\n" % len(row) for row in data.splitlines())
    return written


def outputs(tmp_path: Path) -> dict[str, bytes]:
    out = tmp_path / "out"
    return {path.name: path.read_bytes() for path in sorted(out.glob("*.out"))}


def job_for(tmp_path: Path, url: str | list[str], **agent: Any) -> dict[str, Any]:
    return transform_job(
        "replicas",
        f"{tmp_path / 'in'}/",
        str(tmp_path / "out"),
        model_url=None,
        split_type="Line",
        batch_strategy="MultiRecord",
        assemble_with="Line",
        max_payload_mb=1,
        max_concurrent=CONCURRENCY,
        agent={"ModelUrl": url, **agent},
    )


def model_log(port: int) -> dict[str, Any] | None:
    """The example server's ``/_log`` on ``port``, or ``None`` when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/_log", timeout=2) as answer:
            log: dict[str, Any] = orjson.loads(answer.read())
    except OSError:
        return None
    return log


def three_ports() -> int:
    return free_port_block(3) + 1


def test_three_replicas_started_with_port_placeholders_share_the_work(tmp_path: Path) -> None:
    expected = write_inputs(tmp_path)
    port = three_ports()
    command = model_command("--port", "{port}", "--behaviour", "lines", "--delay-ms", "100")
    job = job_for(tmp_path, f"http://{HOST}:{port}", ModelCommand=command, ModelReplicas=3)

    agent = start_agent(job, tmp_path)
    most = [0, 0, 0]  # the most requests each replica had in progress, read from its /_log
    try:
        while agent.process.popen is not None and agent.process.popen.poll() is None:
            for i in range(3):
                seen = model_log(port + i)
                if seen is not None:
                    most[i] = max(most[i], seen["max_in_flight"])
            time.sleep(0.05)
        run = agent.wait(120)
    finally:
        agent.kill()

    assert (run.returncode, run.status) == (0, "Completed"), run.explain()
    assert outputs(tmp_path) == expected
    assert run.summary is not None
    replicas = run.summary["Replicas"]
    assert [r["Url"] for r in replicas] == [f"http://{HOST}:{port + i}" for i in range(3)]
    assert all(r["Requests"] > 0 and r["Restarts"] == 0 for r in replicas), replicas
    assert sum(r["Requests"] for r in replicas) == run.summary["Requests"]
    for i in range(3):
        assert f"replica {i} listens on http://{HOST}:{port + i}" in run.log
    assert len(run.model_pids) == 3 and run.leftovers == []
    assert all(0 < n <= CONCURRENCY for n in most), most


def test_servers_listed_in_model_url_each_get_requests_within_the_limit(
    tmp_path: Path, model_server_factory: Callable[..., ModelServer]
) -> None:
    expected = write_inputs(tmp_path)
    servers = [model_server_factory("--behaviour", "lines", "--delay-ms", "20") for _ in range(3)]
    job = job_for(tmp_path, [server.url for server in servers])

    run = run_agent(job, tmp_path, timeout=120)

    assert (run.returncode, run.status) == (0, "Completed"), run.explain()
    assert outputs(tmp_path) == expected
    for server in servers:
        seen = server.log()
        assert seen["invocations"] > 0
        assert seen["max_in_flight"] <= CONCURRENCY, seen["max_in_flight"]
    assert run.summary is not None
    assert sum(server.log()["invocations"] for server in servers) == run.summary["Requests"]


def test_a_killed_replica_is_restarted_and_the_job_completes(tmp_path: Path) -> None:
    expected = write_inputs(tmp_path, files=12)  # 12 requests of a second each, 6 at a time
    port = three_ports()
    command = model_command("--port", "{port}", "--behaviour", "lines", "--delay-ms", "1000")
    job = job_for(tmp_path, f"http://{HOST}:{port}", ModelCommand=command, ModelReplicas=3)

    agent = start_agent(job, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while len(agent.model_pids()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        while "files (" not in agent.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # requests in flight on every replica
        victim = agent.model_pids()[1]
        os.killpg(victim, signal.SIGKILL)
        run = agent.wait(120)
    finally:
        agent.kill()

    assert (run.returncode, run.status) == (0, "Completed"), run.explain()
    assert outputs(tmp_path) == expected
    assert "replica 1" in run.log and "is down" in run.log and "is back after restart 1" in run.log
    assert run.summary is not None
    assert [r["Restarts"] for r in run.summary["Replicas"]] == [0, 1, 0]
    assert not process_alive(victim)
    assert run.leftovers == []


# Replica 1 exits before it ever answers /ping, the first time only; then it serves.
FAILS_ONCE = """
import os, sys
marker, replica, command = sys.argv[1], sys.argv[2], sys.argv[3:]
if replica == "1" and not os.path.exists(marker):
    open(marker, "w").close()
    sys.exit(3)
os.execv(command[0], command)
"""


def test_a_replica_that_dies_during_its_start_is_restarted_and_the_job_completes(
    tmp_path: Path,
) -> None:
    """README "Replicas": the run fails only when no replica is left, also at start-up."""
    expected = write_inputs(tmp_path, files=18)  # a second a request: long enough to rejoin
    port = three_ports()
    wrapper = tmp_path / "fails_once.py"
    wrapper.write_text(FAILS_ONCE)
    served = model_command("--port", "{port}", "--behaviour", "lines", "--delay-ms", "1000")
    command = [sys.executable, str(wrapper), str(tmp_path / "failed"), "{replica}", *served]
    job = job_for(tmp_path, f"http://{HOST}:{port}", ModelCommand=command, ModelReplicas=3)

    run = run_agent(job, tmp_path, timeout=120)

    assert (run.returncode, run.status) == (0, "Completed"), run.explain()
    assert outputs(tmp_path) == expected
    assert f"replica 1 (http://{HOST}:{port + 1}) did not start" in run.log
    assert "is back after restart 1" in run.log
    assert run.summary is not None
    assert [r["Restarts"] for r in run.summary["Replicas"]] == [0, 1, 0]
    assert run.leftovers == []


def test_when_every_replica_dies_during_its_start_the_run_fails_at_once(tmp_path: Path) -> None:
    write_inputs(tmp_path, files=1)
    port = three_ports()
    command = [sys.executable, "-c", "import sys; sys.exit(3)", "{port}"]
    job = job_for(tmp_path, f"http://{HOST}:{port}", ModelCommand=command, ModelReplicas=3)

    run = run_agent(job, tmp_path, timeout=120)

    assert (run.returncode, run.status) == (1, "Failed"), run.explain()
    assert run.summary is not None
    assert "exit" in run.summary["FailureReason"], run.summary["FailureReason"]
    assert "restart" not in run.log


def test_when_every_replica_is_gone_for_good_the_run_fails_saying_so(tmp_path: Path) -> None:
    write_inputs(tmp_path, files=12)
    port = three_ports()
    # Each replica exits when its third request arrives, and may not be restarted: six
    # requests are answered, the seventh finds no replica.
    command = model_command("--port", "{port}", "--behaviour", "lines", "--exit-after", "2")
    job = job_for(
        tmp_path,
        f"http://{HOST}:{port}",
        ModelCommand=command,
        ModelReplicas=3,
        ReplicaRestarts=0,
    )

    run = run_agent(job, tmp_path, timeout=120)

    assert (run.returncode, run.status) == (1, "Failed"), run.explain()
    assert run.summary is not None
    assert "no model replica is left" in run.summary["FailureReason"]
    assert "Agent.ReplicaRestarts" in run.summary["FailureReason"]
    assert run.leftovers == []


def test_execution_parameters_come_from_the_first_replica(
    tmp_path: Path, model_server_factory: Callable[..., ModelServer]
) -> None:
    expected = write_inputs(tmp_path, files=2)
    first = model_server_factory(
        "--behaviour", "lines", "--execution-parameters", '{"MaxConcurrentTransforms": 3}'
    )
    others = [model_server_factory("--behaviour", "lines") for _ in range(2)]
    job = job_for(tmp_path, [first.url, *(server.url for server in others)])
    del job["MaxConcurrentTransforms"]

    run = run_agent(job, tmp_path, timeout=120)

    assert run.returncode == 0, run.explain()
    assert outputs(tmp_path) == expected
    assert run.summary is not None
    assert run.summary["ExecutionParameters"]["MaxConcurrentTransforms"] == 3
    for server in others:
        paths = {entry["path"] for entry in server.requests("/execution-parameters")}
        assert paths == set(), paths
