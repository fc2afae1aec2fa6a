"""Request slots are shared across files: many small files keep the model as busy as one big one.

500 objects of one record each, ``MaxConcurrentTransforms`` = 8, and a model taking 50 ms
per request on average. The delay is random (25-75 ms): with a fixed one, requests would
arrive in waves of 8 whose in-flight count at arrival averages 4.5 by construction, whatever
the agent does. The model logs, for each request, how many were in flight when it arrived
(itself included); the agent keeps the model busy when that count averages above 6 and
reaches 8, never more.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from tests.support.runjob import output_keys, put_objects, run_agent, transform_job
from tests.support.servers import ModelServer, SeaweedFS

pytestmark = [pytest.mark.integration, pytest.mark.twin_free]

FILES = 300
CONCURRENCY = 8


def test_many_small_files_keep_every_request_slot_busy(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str, model: ModelServer, tmp_path: Path
) -> None:
    objects = {f"in/part-{n:04d}.csv": b"%d,record of file %d\n" % (n, n) for n in range(FILES)}
    put_objects(s3_server.sync_client(), bucket, objects)
    # 100-200 ms an answer: long against what one file costs the agent, so the test still
    # holds with the suite's other workers (and anything else) on the same two cores.
    model.control(delay_ms=100, random_delay_ms=100)
    job = transform_job(
        "many-small-files",
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out/",
        model_url=model.url,
        split_type="Line",
        batch_strategy="MultiRecord",
        assemble_with="Line",
        max_concurrent=CONCURRENCY,
    )

    run = run_agent(job, tmp_path)

    assert run.returncode == 0, run.explain()
    assert run.summary is not None and run.summary["FilesCompleted"] == FILES
    assert len(output_keys(s3_server.sync_client(), bucket, "out/")) == FILES
    log = model.log()
    requests = [entry for entry in log["requests"] if entry["path"] == "/invocations"]
    assert len(requests) == FILES
    arrivals = [entry["in_flight"] for entry in requests]
    assert log["max_in_flight"] == CONCURRENCY
    assert statistics.mean(arrivals) > 6, (
        f"in flight at arrival: mean {statistics.mean(arrivals):.2f}, "
        f"histogram {sorted((n, arrivals.count(n)) for n in set(arrivals))}; "
        f"the job took {run.seconds:.1f} s"
    )
