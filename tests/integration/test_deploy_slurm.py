"""deploy/slurm/bt-agent.sbatch on a real Slurm cluster (tests/support/slurm.py).

The cluster is this host: munged, slurmctld and slurmd started for the module, stopped by
pid at its end. The array's tasks run the job against the session's SeaweedFS and the
example model server, as users run it: the script submitted with `sbatch --array`, the
agent told who it is by Slurm's variables only. Skipped, saying why, where Slurm and MUNGE
are not installed or the test is not root. Measured on 2 cores: the cluster starts in about
2 s and stops in 1.5 s; the 3-task array takes about 4 s, the usage error 2 s, the stop
3 to 6 s (the task's model must start first): about 14 s for the module.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.multirun import BodyIndex, rows_of
from tests.support.processes import (
    REPO_ROOT,
    free_port_block,
    http_status,
    process_alive,
    wait_until,
)
from tests.support.runjob import (
    get_objects,
    model_command,
    output_keys,
    put_objects,
    transform_job,
    write_job,
)
from tests.support.servers import ModelServer, SeaweedFS
from tests.support.slurm import SlurmCluster, missing

pytestmark = [pytest.mark.integration, pytest.mark.slurm, pytest.mark.twin_free]

SCRIPT = REPO_ROOT / "deploy" / "slurm" / "bt-agent.sbatch"
SOURCE = "SLURM_ARRAY_TASK_ID (Slurm job array)"


@pytest.fixture(scope="module")
def slurm() -> Iterator[SlurmCluster]:
    """The module's cluster; its daemons are stopped by pid, and checked gone, at the end."""
    reason = missing()
    if reason is not None:
        pytest.skip(reason)
    cluster = SlurmCluster()
    cluster.start()
    pids = {process.name: process.pid for process in cluster.processes}
    try:
        yield cluster
    finally:
        cluster.stop()
        left = {name: pid for name, pid in pids.items() if process_alive(pid)}
        assert not left, f"Slurm daemons still running after stop: {left}"


def agent_env() -> dict[str, str]:
    """What the submitter exports for the tasks (sbatch passes its whole environment):
    this tree's agent through BT_AGENT, split on blanks by the script."""
    return {
        "BT_AGENT": f"{sys.executable} -m agent",
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONUNBUFFERED": "1",
    }


def task_log(directory: Path, job_id: str, task: int) -> str:
    """A task's output file, named by the script's `--output=bt-agent-%A_%a.out`."""
    path = directory / f"bt-agent-{job_id}_{task}.out"
    assert path.exists(), f"no {path.name} in {sorted(p.name for p in directory.iterdir())}"
    return path.read_text(errors="replace")


def test_a_three_task_array_runs_the_job_as_instances_0_1_2_of_3(
    slurm: SlurmCluster,
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    model: ModelServer,
    tmp_path: Path,
) -> None:
    files = {f"in/part-{n}.csv": rows_of(f"part-{n}", 30 + 17 * n) for n in range(7)}
    client = s3_server.sync_client()
    put_objects(client, bucket, files)
    job = transform_job(
        "slurm-array",
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out",
        model_url=model.url,
        split_type="Line",
        assemble_with="Line",
        batch_strategy="MultiRecord",
        max_payload_mb=1,
    )
    job["TransformResources"] = {"InstanceCount": 3, "InstanceType": "ml.m5.xlarge"}
    job_file = write_job(job, tmp_path)

    job_id = slurm.sbatch(
        "--array=0-2", str(SCRIPT), "--job", str(job_file), cwd=tmp_path, env=agent_env()
    )
    tasks = slurm.wait_for_job(job_id, timeout=120)

    logs = {task: task_log(tmp_path, job_id, task) for task in range(3)}
    explain = "\n".join(f"--- task {task}:\n{text[-3000:]}" for task, text in logs.items())
    assert {i: (t["JobState"], t["ExitCode"]) for i, t in tasks.items()} == {
        str(i): ("COMPLETED", "0:0") for i in range(3)
    }, explain
    for task, text in logs.items():
        assert f"instance {task} of 3 (from {SOURCE})" in text, explain
    outputs = get_objects(client, bucket, output_keys(client, bucket, "out/"))
    assert outputs == {key.replace("in/", "out/") + ".out": data for key, data in files.items()}
    index = BodyIndex(files)
    assert index.per_file(model.requests()) == index.sent_once(files)  # each file by one task


def test_the_task_exit_code_is_the_agents_a_usage_error_fails_every_task_with_2(
    slurm: SlurmCluster, tmp_path: Path
) -> None:
    absent = tmp_path / "no-such-job.json"
    job_id = slurm.sbatch(
        "--array=0-1", str(SCRIPT), "--job", str(absent), cwd=tmp_path, env=agent_env()
    )
    tasks = slurm.wait_for_job(job_id, timeout=120)

    logs = {task: task_log(tmp_path, job_id, task) for task in range(2)}
    assert {i: (t["JobState"], t["ExitCode"]) for i, t in tasks.items()} == {
        "0": ("FAILED", "2:0"),
        "1": ("FAILED", "2:0"),
    }, logs
    for text in logs.values():
        assert str(absent) in text, text  # the agent's own message says what is wrong


def test_a_sigterm_to_the_batch_shell_reaches_the_agent_which_stops_with_143(
    slurm: SlurmCluster,
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    tmp_path: Path,
) -> None:
    """`scancel --batch --signal=TERM` signals the batch shell alone: only because the script
    `exec`s the agent does the agent hear it and stop cleanly (a shell would die of it)."""
    put_objects(s3_server.sync_client(), bucket, {f"in/{n}.csv": b"a,b\n" * 50 for n in range(4)})
    port = free_port_block(1) + 1
    job = transform_job(
        "slurm-stop",
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out",
        model_url=f"http://127.0.0.1:{port}",
        split_type="Line",
        batch_strategy="SingleRecord",
        max_concurrent=1,
        agent={"ModelCommand": model_command("--port", "{port}", "--delay-ms", "200")},
    )
    job_file = write_job(job, tmp_path)
    job_id = slurm.sbatch(
        "--array=0-0", str(SCRIPT), "--job", str(job_file), cwd=tmp_path, env=agent_env()
    )

    ping = f"http://127.0.0.1:{port}/ping"
    # The agent is busy once the model it started answers: 200 records at 0.2 s each.
    if not wait_until(lambda: http_status(ping) == 200 or slurm.ended(job_id), 60.0, 0.1):
        slurm.run("scancel", job_id)
        pytest.fail(f"the task's model never listened on {port} within 60 s\n{slurm.logs()}")
    assert not slurm.ended(job_id), task_log(tmp_path, job_id, 0)
    signalled = slurm.run("scancel", "--batch", "--signal=TERM", job_id)
    assert signalled.returncode == 0, signalled.stderr

    tasks = slurm.wait_for_job(job_id, timeout=60)
    text = task_log(tmp_path, job_id, 0)
    assert (tasks["0"]["JobState"], tasks["0"]["ExitCode"]) == ("FAILED", "143:0"), text
    assert "SIGTERM received: stopping" in text, text
    assert http_status(ping) is None, f"the model command still listens on {port}:\n{text}"
