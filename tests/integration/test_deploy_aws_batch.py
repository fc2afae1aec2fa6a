"""deploy/aws-batch run as its array job's children would run it, with no Batch: one agent
per array index, each with the job definition's command, the job file where the image holds
it, and ``AWS_BATCH_JOB_ARRAY_INDEX``/``AWS_BATCH_JOB_ARRAY_SIZE`` as Batch sets them.

What the test changes, and only that: the job file's directory (/etc/bt-agent in the image)
is moved under a temporary root, each child its own; in the job file, the S3 URIs point at a
bucket of the test SeaweedFS (endpoint and keys come through the environment) and
``Agent.ModelCommand`` ``["serve"]`` (the model image's server) becomes the example model
server on a free port, which ``Agent.ModelUrl`` names instead of 8080. The agent starts and
stops that model itself, as in the container. The children run one after the other: each
model needs the job file's one port.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

import orjson
import pytest

from tests.support.deploy import (
    DEPLOY,
    expected_outputs,
    in_root,
    json_file,
    orchestrated_env,
    run_command,
)
from tests.support.multirun import rows_of, summary_inputs
from tests.support.runjob import get_objects, model_command, output_keys, put_objects
from tests.support.servers import SeaweedFS, free_port, process_alive, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.twin_free]

DIRECTORY = DEPLOY / "aws-batch"
FILES = {f"input/part-{n}.csv": rows_of(f"part-{n}", 20 * (n + 1)) for n in range(9)}
MODEL_PID = re.compile(r"started the model command .* as pid (\d+)")


def test_every_child_of_the_array_job_does_its_share(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str, tmp_path: Path
) -> None:
    command = json_file(DIRECTORY / "job-definition.json")["containerProperties"]["command"]
    size = json_file(DIRECTORY / "submit-job.json")["arrayProperties"]["size"]
    job_path = PurePosixPath(command[command.index("--job") + 1])
    job_file = json_file(DIRECTORY / "job.json")  # what the image holds at job_path
    assert job_file["TransformResources"]["InstanceCount"] == size

    port = free_port()
    model_url = urlsplit(job_file["Agent"]["ModelUrl"])
    job_file["Agent"]["ModelUrl"] = urlunsplit(model_url._replace(netloc=f"127.0.0.1:{port}"))
    job_file["Agent"]["ModelCommand"] = model_command("--port", str(port))
    job_file["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] = f"s3://{bucket}/input/"
    job_file["TransformOutput"]["S3OutputPath"] = f"s3://{bucket}/output/"

    client = s3_server.sync_client()
    put_objects(client, bucket, FILES)
    shares = []
    for child in range(size):
        root = tmp_path / f"child-{child}"
        where = root / job_path.relative_to("/")
        where.parent.mkdir(parents=True)
        where.write_bytes(orjson.dumps(job_file))
        args = [in_root(arg, str(job_path.parent), root) for arg in command]
        assert args != command and len(args) == len(command)
        variables = {"AWS_BATCH_JOB_ARRAY_INDEX": str(child), "AWS_BATCH_JOB_ARRAY_SIZE": str(size)}
        run = run_command(args, orchestrated_env(variables))
        assert (run.returncode, run.status) == (0, "Completed"), run.explain()
        source = "AWS_BATCH_JOB_ARRAY_INDEX (AWS Batch array job)"
        assert f"instance {child} of {size} (from {source})" in run.log, run.log
        assert "InstanceCount is" not in run.log  # no count mismatch warning
        (pid,) = MODEL_PID.findall(run.log)  # the agent started its model, and stopped it:
        assert wait_until(lambda pid=int(pid): not process_alive(pid), 5.0)
        shares.append(summary_inputs(run, "Completed"))

    assert all(shares), f"every child should have had work: {shares}"
    assert sum(len(share) for share in shares) == len(FILES)  # no file done twice
    assert set().union(*shares) == {f"s3://{bucket}/{key}" for key in FILES}
    outputs = get_objects(client, bucket, output_keys(client, bucket, "output/"))
    assert outputs == expected_outputs(FILES, "input/", "output/", job_file["MaxPayloadInMB"])
