"""Static coordination with several real agent processes (docs/design.md §4.3).

Three instances given ``--instance-index i --instance-count 3`` share 30 files of very
different sizes: every ``.out`` is right, the model received each file's bodies exactly
once (so no file was done twice, or skipped), each instance did exactly the share that
``bt-agent plan`` printed beforehand, and the plan's imbalance is printed and small.
"""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from tests.support.multirun import BodyIndex, bt_agent, rows_of, show, summary_inputs
from tests.support.runjob import (
    get_objects,
    output_keys,
    put_objects,
    start_agent,
    transform_job,
    write_job,
)
from tests.support.servers import ModelServer, SeaweedFS

pytestmark = [pytest.mark.integration, pytest.mark.twin_free]

INSTANCES = 3
_SHARE = re.compile(r"^instance (\d+): (\d+) files, (\d+) bytes")
_IMBALANCE = re.compile(r"expected imbalance (\d+\.\d+)")


def skewed_files() -> dict[str, bytes]:
    """30 files from ~1 KB to ~0.5 MB: sizes grow by a quarter from one to the next."""
    return {f"in/f{n:02d}.csv": rows_of(f"f{n:02d}", int(20 * 1.25**n), 60) for n in range(30)}


def printed_plan(text: str) -> tuple[float, dict[int, set[str]]]:
    """The imbalance and each instance's input URIs, from ``bt-agent plan``'s output."""
    found = _IMBALANCE.search(text)
    assert found is not None, text
    shares: dict[int, set[str]] = {}
    current: set[str] | None = None
    for row in text.splitlines():
        if (share := _SHARE.match(row)) is not None:
            current = shares.setdefault(int(share.group(1)), set())
        elif current is not None and row.startswith("  "):
            current.add(row.split()[-1])
    return float(found.group(1)), shares


def test_three_static_instances_share_skewed_files_once_each_as_planned(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str, model: ModelServer, tmp_path: Path
) -> None:
    files = skewed_files()
    client = s3_server.sync_client()
    put_objects(client, bucket, files)
    job = transform_job(
        "static-three",
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out",
        model_url=model.url,
        split_type="Line",
        assemble_with="Line",
        batch_strategy="MultiRecord",
        max_payload_mb=1,
        max_concurrent=2,
    )
    job["TransformResources"] = {"InstanceCount": INSTANCES, "InstanceType": "ml.m5.xlarge"}

    planned = bt_agent("plan", "--job", str(write_job(job, tmp_path)), "--instance-count", "3")
    show("bt-agent plan --job F --instance-count 3", planned.stdout)
    assert planned.returncode == 0, planned.stderr
    imbalance, shares = printed_plan(planned.stdout)
    assert 1.0 <= imbalance < 1.05  # LPT over 30 files: within a few percent of perfect
    assert sorted(shares) == [0, 1, 2]
    assert set().union(*shares.values()) == {f"s3://{bucket}/{key}" for key in files}

    agents = [
        start_agent(job, tmp_path, args=["--instance-index", str(i), "--instance-count", "3"])
        for i in range(INSTANCES)
    ]
    try:
        runs = [agent.wait(60) for agent in agents]
    finally:
        for agent in agents:
            agent.kill()

    for index, run in enumerate(runs):
        assert (run.returncode, run.status) == (0, "Completed"), run.explain()
        assert f"instance {index} of 3 (from --instance-index)" in run.log
        assert f"(imbalance {imbalance:.3f})" in run.log
        # Each instance did exactly the share the plan printed, all of it Completed.
        assert summary_inputs(run, "Completed") == summary_inputs(run) == shares[index]
    outputs = get_objects(client, bucket, output_keys(client, bucket, "out/"))
    assert outputs == {key.replace("in/", "out/") + ".out": data for key, data in files.items()}
    index = BodyIndex(files)
    assert index.per_file(model.requests()) == index.sent_once(files)
    # Exactly one of them (the last to finish) saw every file final and wrote the summary.
    writers = [run for run in runs if run.summary and run.summary["JobSummaryStatus"]]
    assert [run.summary["JobSummaryStatus"] for run in writers if run.summary] == ["Completed"]
    after = bt_agent("status", "--job", str(write_job(job, tmp_path)))
    assert orjson.loads(after.stdout)["FilesCompleted"] == len(files), after.stderr
