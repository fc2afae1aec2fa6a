"""``bt-agent --job job.json --model model.json`` end to end (README "From SageMaker: the
model file"): the artifacts of ``ModelDataUrl`` on SeaweedFS are unpacked, the model
command sees them through ``{model_dir}``, the model's Environment reaches it under the
job's, and a second run downloads nothing."""

from __future__ import annotations

import io
import sys
import tarfile
import textwrap
from pathlib import Path

import orjson
import pytest

from tests.support.processes import HOST, free_port_block
from tests.support.runjob import put_objects, run_agent, transform_job
from tests.support.servers import REPO_ROOT, SeaweedFS

pytestmark = pytest.mark.integration

# A model server that reads its "weights" from the model directory and its greeting from
# the environment, then serves the example server's line answers: it refuses to start
# unless both are there.
SERVES_FROM_MODEL_DIR = textwrap.dedent(
    """
    import os, runpy, sys
    model_dir, port, repository = sys.argv[1], sys.argv[2], sys.argv[3]
    sys.path.insert(0, repository)  # where examples/ is
    with open(os.path.join(model_dir, "weights.bin"), "rb") as f:
        assert f.read() == b"w1", "wrong weights"
    assert os.environ["FROM_MODEL"] == "model" and os.environ["BOTH"] == "job"
    sys.argv = ["model_server", "--host", "127.0.0.1", "--port", port, "--behaviour", "lines"]
    runpy.run_module("examples.model_server", run_name="__main__", alter_sys=True)
    """
)


def model_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("weights.bin")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"w1"))
    return buffer.getvalue()


def test_the_model_file_brings_its_artifacts_and_environment(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str, tmp_path: Path
) -> None:
    rows = b"".join(b"%d,x\n" % i for i in range(1_000))
    put_objects(
        s3_server.sync_client(),
        bucket,
        {"in/a.csv": rows, "models/m1/model.tar.gz": model_archive()},
    )
    port = free_port_block(1) + 1
    script = tmp_path / "serve.py"
    script.write_text(SERVES_FROM_MODEL_DIR)
    model = {
        "ModelName": "m1",
        "PrimaryContainer": {
            "Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/m1:latest",
            "ModelDataUrl": f"s3://{bucket}/models/m1/model.tar.gz",
            "Environment": {"FROM_MODEL": "model", "BOTH": "model"},
        },
        "ExecutionRoleArn": "arn:aws:iam::123456789012:role/sagemaker",
    }
    (tmp_path / "model.json").write_bytes(orjson.dumps(model))
    job = transform_job(
        "model-file",
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out",
        model_url=f"http://{HOST}:{port}",
        split_type="Line",
        assemble_with="Line",
        agent={
            "ModelCommand": [sys.executable, str(script), "{model_dir}", "{port}", str(REPO_ROOT)],
            "ModelDir": str(tmp_path / "models" / "m1"),
        },
    )
    job["ModelName"] = "m1"
    job["Environment"] = {"BOTH": "job"}
    args = ["--model", str(tmp_path / "model.json")]

    first = run_agent(job, tmp_path, args=args, timeout=90)

    assert (first.returncode, first.status) == (0, "Completed"), first.explain()
    assert "fetching model artifacts" in first.log and "nothing downloaded" not in first.log
    assert (tmp_path / "models" / "m1" / "weights.bin").read_bytes() == b"w1"
    output = s3_server.sync_client().get_object(Bucket=bucket, Key="out/a.csv.out")
    assert output["Body"].read() == b"".join(b"%d\n" % len(b"%d,x" % i) for i in range(1_000))

    again = run_agent(job, tmp_path, args=args, timeout=90)

    assert again.returncode == 0, again.explain()
    assert "nothing downloaded" in again.log and "fetching model artifacts" not in again.log
