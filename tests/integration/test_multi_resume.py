"""Stop, resume, redo what changed (docs/design.md §4.7) with real agents, and ``bt-agent status``.

One job, run again and again over the same state prefix:

1. stopped by SIGTERM halfway (a slow model): exit 143, ``Stopped``; ``bt-agent status``
   shows the progress while it runs;
2. rerun: the model receives only the unfinished files' bodies, and the job ends
   ``Completed``; ``bt-agent status`` prints the job summary;
3. one input object re-uploaded with other content, rerun: only that file is redone;
4. rerun with another MaxPayloadInMB: exit 2 and nothing sent, unless ``--force``, which
   redoes every file.
"""

from __future__ import annotations

import signal
from pathlib import Path

import orjson
import pytest

from tests.support.multirun import (
    BodyIndex,
    completed_inputs,
    rows_of,
    show,
    status_of,
    summary_inputs,
    wait_for,
)
from tests.support.runjob import (
    get_objects,
    output_keys,
    put_objects,
    run_agent,
    start_agent,
    transform_job,
)
from tests.support.servers import ModelServer, SeaweedFS

pytestmark = [pytest.mark.integration, pytest.mark.twin_free]


def test_a_stopped_job_resumes_and_only_changed_inputs_are_redone(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str, model: ModelServer, tmp_path: Path
) -> None:
    files = {f"in/f{n}.csv": rows_of(f"f{n}", 300 + 40 * n) for n in range(10)}
    uris = {f"s3://{bucket}/{key}": key for key in files}
    client = s3_server.sync_client()
    put_objects(client, bucket, files)
    job = transform_job(
        "resume",
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out",
        model_url=model.url,
        split_type="Line",
        assemble_with="Line",
        batch_strategy="MultiRecord",
        max_payload_mb=1,
        max_concurrent=1,
    )

    def outputs() -> dict[str, bytes]:
        return get_objects(client, bucket, output_keys(client, bucket, "out/"))

    def expected(data: dict[str, bytes]) -> dict[str, bytes]:
        return {key.replace("in/", "out/") + ".out": body for key, body in data.items()}

    # 1. A slow model (one request at a time, 0.4 s each); SIGTERM once 4 files are done.
    model.control(delay_ms=400)
    agent = start_agent(job, tmp_path)
    try:
        wait_for(lambda: len(completed_inputs(client, bucket, job)) >= 2, 30, "2 files", agent)
        during = status_of(job, tmp_path)
        wait_for(lambda: len(completed_inputs(client, bucket, job)) >= 4, 30, "4 files", agent)
        agent.signal(signal.SIGTERM)
        stopped = agent.wait(30)
    finally:
        agent.kill()
    show("bt-agent status during the run (Static, slow model)", during.stdout)
    assert during.returncode == 0, during.stderr
    assert during.stdout.startswith("resume: InProgress")
    assert " of 10 completed" in during.stdout
    assert (stopped.returncode, stopped.status) == (143, "Stopped"), stopped.explain()
    finished = completed_inputs(client, bucket, job)
    assert 4 <= len(finished) < 10
    assert summary_inputs(stopped, "Completed") == finished
    assert outputs() == expected({uris[uri]: files[uris[uri]] for uri in finished})
    stopped_status = status_of(job, tmp_path)
    assert orjson.loads(stopped_status.stdout)["TransformJobStatus"] == "Stopped"

    # 2. Resume: only the unfinished files reach the model.
    model.reset()
    resumed = run_agent(job, tmp_path)
    assert (resumed.returncode, resumed.status) == (0, "Completed"), resumed.explain()
    unfinished = {uris[uri] for uri in set(uris) - finished}
    index = BodyIndex(files)
    assert index.per_file(model.requests()) == index.sent_once(unfinished)
    assert summary_inputs(resumed) == {uri for uri in uris if uri not in finished}
    assert outputs() == expected(files)
    after = status_of(job, tmp_path)
    show("bt-agent status after the run (Static)", after.stdout)
    summary = orjson.loads(after.stdout)
    assert (summary["TransformJobStatus"], summary["FilesCompleted"]) == ("Completed", 10)

    # 3. One input changes (a new ETag): only that file is redone.
    changed = dict(files, **{"in/f3.csv": rows_of("f3-v2", 333)})
    put_objects(client, bucket, {"in/f3.csv": changed["in/f3.csv"]})
    model.reset()
    redone = run_agent(job, tmp_path)
    assert (redone.returncode, redone.status) == (0, "Completed"), redone.explain()
    index = BodyIndex(changed)
    assert index.per_file(model.requests()) == index.sent_once(["in/f3.csv"])
    assert summary_inputs(redone) == {f"s3://{bucket}/in/f3.csv"}
    assert outputs() == expected(changed)

    # 4. Other output settings: refused (exit 2, nothing sent) unless --force.
    other = dict(job, MaxPayloadInMB=2)
    model.reset()
    refused = run_agent(other, tmp_path)
    assert refused.returncode == 2, refused.explain()
    assert "completed with different output settings" in refused.log
    assert "--force" in refused.log
    assert model.requests() == []
    forced = run_agent(other, tmp_path, args=["--force"])
    assert (forced.returncode, forced.status) == (0, "Completed"), forced.explain()
    assert index.per_file(model.requests()) == index.sent_once(changed)  # bodies < 1 MiB
    assert outputs() == expected(changed)
