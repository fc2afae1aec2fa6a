"""deploy/kubernetes run as its pods would run it, with no cluster: one agent per completion
index, each with the Job's container args, the ConfigMap's job file at the volume's mount
path, ``JOB_COMPLETION_INDEX`` set, and its own model server beside it (the sidecar).

What the test changes, and only that: the mount path is moved under a temporary root (each
pod its own, as each pod has its own file system); in the job file, the S3 URIs point at a
bucket of the test SeaweedFS (the S3 endpoint and keys come through the environment, as a
pod's would) and ModelUrl's port is a free port instead of 8080, which may be taken on a
test machine; the model is the example model server (echo), started like the sidecar, on
that port. The pods run one after the other: each sidecar needs the job file's one port.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

import orjson
import pytest

from tests.support.deploy import (
    DEPLOY,
    expected_outputs,
    in_root,
    orchestrated_env,
    pod_spec,
    run_command,
    yaml_documents,
)
from tests.support.multirun import BodyIndex, rows_of, summary_inputs
from tests.support.runjob import get_objects, output_keys, put_objects
from tests.support.servers import ModelServer, SeaweedFS, free_port

pytestmark = [pytest.mark.integration, pytest.mark.twin_free]

DIRECTORY = DEPLOY / "kubernetes"
FILES = {f"input/part-{n}.csv": rows_of(f"part-{n}", 25 * (n + 1)) for n in range(7)}
FILES["input/nested/deep.csv"] = rows_of("deep", 90)


def test_every_pod_of_the_indexed_job_does_its_share(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str, tmp_path: Path
) -> None:
    (job,) = [d for d in yaml_documents(DIRECTORY / "job.yaml") if d["kind"] == "Job"]
    spec = pod_spec(job)
    (agent,) = spec["containers"]
    (mount,) = agent["volumeMounts"]
    (generator,) = yaml_documents(DIRECTORY / "kustomization.yaml")[0]["configMapGenerator"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == generator["name"]
    (file_name,) = generator["files"]
    job_file = orjson.loads((DIRECTORY / file_name).read_bytes())  # the ConfigMap's content

    port = free_port()
    model_url = urlsplit(job_file["Agent"]["ModelUrl"])
    job_file["Agent"]["ModelUrl"] = urlunsplit(model_url._replace(netloc=f"127.0.0.1:{port}"))
    job_file["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] = f"s3://{bucket}/input/"
    job_file["TransformOutput"]["S3OutputPath"] = f"s3://{bucket}/output/"
    count = job["spec"]["completions"]
    assert count == job["spec"]["parallelism"] == job_file["TransformResources"]["InstanceCount"]

    client = s3_server.sync_client()
    put_objects(client, bucket, FILES)
    index = BodyIndex(FILES, job_file["MaxPayloadInMB"])
    shares = []
    for completion in range(count):
        root = tmp_path / f"pod-{completion}"
        mounted = root / PurePosixPath(mount["mountPath"]).relative_to("/")
        mounted.mkdir(parents=True)
        (mounted / Path(file_name).name).write_bytes(orjson.dumps(job_file))
        args = [in_root(arg, mount["mountPath"], root) for arg in agent["args"]]
        assert args != agent["args"] and len(args) == len(agent["args"])
        # The one other change: /metrics on a free port of 127.0.0.1, not 9100 of every
        # interface (the pod's own network namespace has 9100 to itself).
        metrics = free_port()
        args[args.index("--metrics-port") + 1] = str(metrics)
        args += ["--metrics-address", "127.0.0.1"]
        sidecar = ModelServer(root / "model.log", "--port", str(port))  # the last --port wins
        sidecar.start(wait_for_ping=False)  # the agent waits for /ping itself
        try:
            run = run_command(args, orchestrated_env({"JOB_COMPLETION_INDEX": str(completion)}))
            requests = sidecar.requests()
        finally:
            sidecar.stop()
        assert (run.returncode, run.status) == (0, "Completed"), run.explain()
        source = "JOB_COMPLETION_INDEX (Kubernetes indexed Job)"
        assert f"instance {completion} of {count} (from {source})" in run.log, run.log
        assert f"metrics at http://127.0.0.1:{metrics}/metrics" in run.log, run.log
        share = summary_inputs(run, "Completed")
        shares.append(share)
        mine = {key for key in FILES if f"s3://{bucket}/{key}" in share}
        assert index.per_file(requests) == index.sent_once(mine)  # its sidecar, its files only

    assert all(shares), f"every pod should have had work: {shares}"
    assert sum(len(share) for share in shares) == len(FILES)  # no file done twice
    assert set().union(*shares) == {f"s3://{bucket}/{key}" for key in FILES}
    outputs = get_objects(client, bucket, output_keys(client, bucket, "output/"))
    assert outputs == expected_outputs(FILES, "input/", "output/", job_file["MaxPayloadInMB"])
