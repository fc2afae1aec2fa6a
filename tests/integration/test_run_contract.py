"""The model-server contract (README, The model server) end to end, and a job in SageMaker's shape.

* ``Content-Type``/``Accept``: absent when the job leaves them out (no client defaults),
  exactly the job's values when it sets them.
* ``/execution-parameters``: its answers fill only the fields the job leaves out, and the
  summary's ``ExecutionParameters`` shows the values in force, which the requests obey.
* A request body as the boto3 examples of the SageMaker documentation write it runs with
  nothing changed but its URIs (the model's address is given on the command line).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.runjob import (
    MIB,
    body_counts,
    get_objects,
    header_names,
    line,
    logged_counts,
    output_keys,
    put_objects,
    request_bodies,
    run_agent,
    run_in_process,
    transform_job,
)
from tests.support.servers import ModelServer, SeaweedFS

pytestmark = pytest.mark.integration


def rows(count: int, width: int = 40) -> bytes:
    return b"".join(b"%d,%s\n" % (n, b"x" * (n % width)) for n in range(count))


@pytest.mark.parametrize(
    ("content_type", "accept"),
    [(None, None), ("text/csv", "application/jsonlines"), ("application/x-npy", None)],
    ids=["unset", "both-set", "content-type-only"],
)
def test_only_the_headers_the_job_sets_are_sent(
    content_type: str | None,
    accept: str | None,
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    model: ModelServer,
    tmp_path: Path,
) -> None:
    put_objects(s3_server.sync_client(), bucket, {"in/a.csv": rows(50), "in/b.csv": rows(3)})
    job = transform_job(
        "headers",
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out",
        model_url=model.url,
        split_type="Line",
        batch_strategy="SingleRecord",
        content_type=content_type,
        accept=accept,
        max_concurrent=4,
    )

    run = run_in_process(job, tmp_path)

    assert run.returncode == 0, run.explain()
    requests = model.requests()
    assert len(requests) == 53
    for entry in requests:
        names = Counter(name.lower() for name, _ in entry["headers"])
        values = header_names(entry)
        for header, wanted in (("content-type", content_type), ("accept", accept)):
            if wanted is None:
                assert header not in names, entry["headers"]
            else:
                assert (names[header], values[header]) == (1, wanted), entry["headers"]
        assert "accept-encoding" not in names  # no client default either


@pytest.mark.parametrize(
    ("job_sets", "in_force"),
    [
        ({}, {"MaxConcurrentTransforms": 2, "MaxPayloadInMB": 1, "BatchStrategy": "MultiRecord"}),
        (
            {"batch_strategy": "SingleRecord", "max_concurrent": 5},
            {"MaxConcurrentTransforms": 5, "MaxPayloadInMB": 1, "BatchStrategy": "SingleRecord"},
        ),
        (
            {"batch_strategy": "MultiRecord", "max_concurrent": 3, "max_payload_mb": 2},
            {"MaxConcurrentTransforms": 3, "MaxPayloadInMB": 2, "BatchStrategy": "MultiRecord"},
        ),
    ],
    ids=["model-sets-all", "job-sets-two", "job-sets-all"],
)
def test_execution_parameters_fill_only_what_the_job_leaves_out(
    job_sets: dict[str, Any],
    in_force: dict[str, Any],
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    model: ModelServer,
    tmp_path: Path,
) -> None:
    single = in_force["BatchStrategy"] == "SingleRecord"
    data = rows(400) if single else rows(60_000, width=60)  # MultiRecord: about 2.2 MiB
    put_objects(s3_server.sync_client(), bucket, {"in/data.csv": data})
    answer = {"MaxConcurrentTransforms": 2, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 1}
    model.control(execution_parameters=answer, random_delay_ms=5)
    job = transform_job(
        "execution-parameters",
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out",
        model_url=model.url,
        split_type="Line",
        **job_sets,
    )
    run = run_in_process(job, tmp_path)

    assert run.returncode == 0, run.explain()
    assert run.summary is not None
    assert run.summary["ExecutionParameters"] == in_force
    records = [line(row) for row in data.splitlines(keepends=True)]
    bodies = request_bodies(records, in_force["BatchStrategy"], in_force["MaxPayloadInMB"] * MIB)
    assert logged_counts(model.requests()) == body_counts(bodies)
    assert model.log()["max_in_flight"] <= in_force["MaxConcurrentTransforms"]
    client = s3_server.sync_client()
    assert get_objects(client, bucket, ["out/data.csv.out"]) == {"out/data.csv.out": data}


def sagemaker_example_request(input_uri: str, output_uri: str) -> dict[str, Any]:
    """CreateTransformJob as the SageMaker examples build it for boto3 (CSV, XGBoost)."""
    return {
        "TransformJobName": "Batch-Transform-2024-05-14-02-03-41",
        "ModelName": "xgboost-churn-model",
        "MaxConcurrentTransforms": 4,
        "MaxPayloadInMB": 6,
        "BatchStrategy": "MultiRecord",
        "TransformOutput": {
            "S3OutputPath": output_uri,
            "Accept": "text/csv",
            "AssembleWith": "Line",
        },
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}},
            "ContentType": "text/csv",
            "SplitType": "Line",
            "CompressionType": "None",
        },
        "TransformResources": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1},
    }


def test_a_job_in_sagemaker_example_shape_runs_unchanged(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str, model: ModelServer, tmp_path: Path
) -> None:
    batches = {
        f"batch-transform/churn/batch_{n}.csv": b"".join(
            b"%d,%d,%.3f,%s\n" % (n, i, i / 7, b"yes" if i % 3 else b"no") for i in range(2_000)
        )
        for n in range(3)
    }
    put_objects(s3_server.sync_client(), bucket, batches)
    model.control(behaviour="lines")  # one answer line per input line, like a CSV scorer
    job = sagemaker_example_request(
        f"s3://{bucket}/batch-transform/churn", f"s3://{bucket}/batch-transform/output"
    )

    run = run_agent(job, tmp_path, args=["--model-url", model.url])

    assert (run.returncode, run.status) == (0, "Completed"), run.explain()
    assert "InstanceType" in run.log  # accepted, ignored, named in one log line
    client = s3_server.sync_client()
    outputs = get_objects(client, bucket, output_keys(client, bucket, "batch-transform/output/"))
    expected = {
        f"batch-transform/output/churn/{key.rsplit('/', 1)[1]}.out": b"".join(
            b"%d\n" % len(row) for row in data.splitlines()
        )
        for key, data in batches.items()
    }
    assert outputs == expected
    for entry in model.requests():
        headers = header_names(entry)
        assert (headers["content-type"], headers["accept"]) == ("text/csv", "text/csv")
