"""Instance identity from orchestrators' variables, with real agent processes (docs/design.md §4.1).

One test per family: a Kubernetes indexed Job (``JOB_COMPLETION_INDEX``, the count from
``--instance-count`` or from the job's ``InstanceCount``), an AWS Batch array job
(``AWS_BATCH_JOB_ARRAY_INDEX``/``_SIZE``) and a Slurm array (``SLURM_ARRAY_TASK_ID``/
``_COUNT``, 1-based through ``SLURM_ARRAY_TASK_MIN``). Two agents each learn who they are
from the environment alone; the union of their work is every file exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.multirun import IDENTITY_VARIABLES, BodyIndex, rows_of, summary_inputs
from tests.support.runjob import get_objects, output_keys, put_objects, start_agent, transform_job
from tests.support.servers import ModelServer, SeaweedFS

pytestmark = [pytest.mark.integration, pytest.mark.twin_free]

FILES = {f"in/part-{n}.csv": rows_of(f"part-{n}", 30 * (n + 1)) for n in range(6)}

# (id, each instance's variables, extra arguments, the job's InstanceCount, logged source)
FAMILIES: list[tuple[str, list[dict[str, str]], list[str], int | None, str]] = [
    (
        "kubernetes-count-from-flag",
        [{"JOB_COMPLETION_INDEX": str(i)} for i in range(2)],
        ["--instance-count", "2"],
        None,
        "JOB_COMPLETION_INDEX (Kubernetes indexed Job)",
    ),
    (
        "kubernetes-count-from-job",
        [{"JOB_COMPLETION_INDEX": str(i)} for i in range(2)],
        [],
        2,
        "JOB_COMPLETION_INDEX (Kubernetes indexed Job)",
    ),
    (
        "aws-batch",
        [{"AWS_BATCH_JOB_ARRAY_INDEX": str(i), "AWS_BATCH_JOB_ARRAY_SIZE": "2"} for i in range(2)],
        [],
        None,
        "AWS_BATCH_JOB_ARRAY_INDEX (AWS Batch array job)",
    ),
    (
        "slurm",  # sbatch --array=1-2: task ids 1 and 2
        [
            {
                "SLURM_ARRAY_TASK_ID": str(i),
                "SLURM_ARRAY_TASK_COUNT": "2",
                "SLURM_ARRAY_TASK_MIN": "1",
            }
            for i in (1, 2)
        ],
        [],
        None,
        "SLURM_ARRAY_TASK_ID (Slurm job array)",
    ),
]


@pytest.mark.parametrize(
    ("variables", "args", "job_count", "source"),
    [family[1:] for family in FAMILIES],
    ids=[family[0] for family in FAMILIES],
)
def test_two_instances_learn_their_index_from_the_orchestrator(
    variables: list[dict[str, str]],
    args: Sequence[str],
    job_count: int | None,
    source: str,
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    model: ModelServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in IDENTITY_VARIABLES:  # only the family under test may speak
        monkeypatch.delenv(name, raising=False)
    client = s3_server.sync_client()
    put_objects(client, bucket, FILES)
    job: dict[str, Any] = transform_job(
        "identity",
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out",
        model_url=model.url,
        split_type="Line",
        assemble_with="Line",
        max_payload_mb=1,
    )
    if job_count is not None:
        job["TransformResources"] = {"InstanceCount": job_count}

    agents = [start_agent(job, tmp_path, env=env, args=args) for env in variables]
    try:
        runs = [agent.wait(60) for agent in agents]
    finally:
        for agent in agents:
            agent.kill()

    shares = []
    for index, run in enumerate(runs):
        assert (run.returncode, run.status) == (0, "Completed"), run.explain()
        assert f"instance {index} of 2 (from {source})" in run.log
        assert "runs as instance 0 of 1" not in run.log  # the no-identity warning
        shares.append(summary_inputs(run, "Completed"))
    assert all(shares), "each instance should have had work"
    assert not shares[0] & shares[1]
    assert shares[0] | shares[1] == {f"s3://{bucket}/{key}" for key in FILES}
    index = BodyIndex(FILES)
    assert index.per_file(model.requests()) == index.sent_once(FILES)
    outputs = get_objects(client, bucket, output_keys(client, bucket, "out/"))
    assert outputs == {key.replace("in/", "out/") + ".out": data for key, data in FILES.items()}
