"""Listings under hostile use, end to end (issue 10: defects 1, 2, 3 and 5).

* A run killed right after it took its listing, then rerun with another ``S3Uri``: the rerun
  transforms the new inputs, not the old ones.
* Manifest entries whose local outputs share one name (``f1.csv`` and ``/f1.csv``;
  ``wk/x.csv`` and ``wk//x.csv``): the first keeps the name, the others
  fail with a reason naming both; nothing is ever "Lost" on a single instance, and a second
  run overwrites nothing.
* An output path above the input prefix leaves the inputs listed.
* SIGTERM while a 120,000-entry manifest is being looked up ends the agent in seconds.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import orjson
import pytest

from tests.support.runjob import (
    get_objects,
    output_keys,
    put_objects,
    run_agent,
    start_agent,
    transform_job,
)
from tests.support.servers import ModelServer, SeaweedFS, process_alive, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.twin_free]


def test_a_rerun_after_a_crash_reads_the_new_s3uri(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str, model: ModelServer, tmp_path: Path
) -> None:
    client = s3_server.sync_client()
    put_objects(client, bucket, {"a/old.csv": b"old\n", "b/new.csv": b"new\n"})
    out = f"s3://{bucket}/out/"
    # No model answers on this port: the run waits for /ping after taking its listing.
    silent = transform_job(
        "crash-rerun",
        f"s3://{bucket}/a/",
        out,
        model_url="http://127.0.0.1:9/",
        agent={"ModelStartupTimeoutSeconds": 60},
    )
    crashed = start_agent(silent, tmp_path)
    try:
        assert wait_until(lambda: "took the run" in crashed.log(), 30), crashed.log()
        crashed.signal(signal.SIGKILL)
        assert crashed.wait(10).returncode == -signal.SIGKILL
    finally:
        crashed.kill()
    # The same job name and output, the input now b/.
    job = transform_job("crash-rerun", f"s3://{bucket}/b/", out, model_url=model.url)

    run = run_agent(job, tmp_path)

    assert (run.returncode, run.status) == (0, "Completed"), run.explain()
    assert sorted(run.files()) == [f"s3://{bucket}/b/new.csv"]
    assert output_keys(client, bucket, "out/new") == ["out/new.csv.out"]
    assert output_keys(client, bucket, "out/old") == []
    assert "joined the run" not in run.log and "another source" in run.log


def test_colliding_output_names_fail_the_later_inputs_and_nothing_is_lost(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str, model: ModelServer, tmp_path: Path
) -> None:
    client = s3_server.sync_client()
    put_objects(client, bucket, {"in/f1.csv": b"1\n", "in/wk/x.csv": b"x\n"})
    # Distinct S3 keys (this S3 server refuses ./ and ../ in keys: the unit tests have them).
    entries = ["f1.csv", "/f1.csv", "wk/x.csv", "wk//x.csv"]
    manifest = [{"prefix": f"s3://{bucket}/in/"}, *entries]
    put_objects(client, bucket, {"m/manifest.json": orjson.dumps(manifest)})
    out = tmp_path / "out"
    job = transform_job(
        "collide",
        f"s3://{bucket}/m/manifest.json",
        str(out),
        model_url=model.url,
        data_type="ManifestFile",
        split_type="Line",
    )
    first, x = f"s3://{bucket}/in/f1.csv", f"s3://{bucket}/in/wk/x.csv"
    for attempt in range(2):  # the second run must not overwrite the first's outputs
        run = run_agent(job, tmp_path)

        assert (run.returncode, run.status) == (1, "Failed"), run.explain()
        assert "Lost" not in run.log
        assert {e["Status"] for e in run.files().values()} <= {"Completed", "Failed"}
        # The whole job, as the state's summary has it (a rerun skips what was completed).
        summary = orjson.loads((out / "_bt-agent" / "collide" / "summary.json").read_bytes())
        assert summary["TransformJobStatus"] == "Failed" and summary["FilesFailed"] == 2
        files = {entry["Input"]: entry for entry in summary["Files"]}
        assert files[first]["Status"] == files[x]["Status"] == "Completed", attempt
        for entry, keeper in (("/f1.csv", first), ("wk//x.csv", x)):
            failed = files[f"s3://{bucket}/in/{entry}"]
            assert failed["Status"] == "Failed", failed
            reason = failed["FailureReason"]
            assert f"s3://{bucket}/in/{entry}" in reason and keeper in reason, reason
            assert "is also the output of" in reason, reason
        assert (out / "f1.csv.out").read_bytes() == b"1\n"
        assert (out / "wk" / "x.csv.out").read_bytes() == b"x\n"


def test_an_output_path_above_the_input_prefix_keeps_the_inputs(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str, model: ModelServer, tmp_path: Path
) -> None:
    client = s3_server.sync_client()
    put_objects(client, bucket, {"proj/in/a.csv": b"a\n", "proj/in/sub/b.csv": b"b\n"})
    job = transform_job(
        "above", f"s3://{bucket}/proj/in/", f"s3://{bucket}/proj/", model_url=model.url
    )

    run = run_agent(job, tmp_path)

    assert (run.returncode, run.status) == (0, "Completed"), run.explain()
    assert sorted(run.files()) == [
        f"s3://{bucket}/proj/in/a.csv",
        f"s3://{bucket}/proj/in/sub/b.csv",
    ]
    written = get_objects(client, bucket, ["proj/a.csv.out", "proj/sub/b.csv.out"])
    assert written == {"proj/a.csv.out": b"a\n", "proj/sub/b.csv.out": b"b\n"}


def test_sigterm_while_a_huge_manifest_is_looked_up_ends_the_agent_in_seconds(
    model: ModelServer, tmp_path: Path
) -> None:
    entries = [f"missing/k-{n:07d}.csv" for n in range(120_000)]
    (tmp_path / "in").mkdir()
    manifest = tmp_path / "manifest.json"
    manifest.write_bytes(orjson.dumps([{"prefix": f"{tmp_path}/in/"}, *entries]))
    out = tmp_path / "out"
    job = transform_job(
        "huge-manifest", str(manifest), str(out), model_url=model.url, data_type="ManifestFile"
    )
    agent = start_agent(job, tmp_path)
    try:
        # Under way once it says so (or, at the latest, a few seconds after the start).
        wait_until(lambda: "looking up the 120000 entries" in agent.log(), 5)
        agent.signal(signal.SIGTERM)
        sent = time.monotonic()
        ended = wait_until(lambda: not process_alive(agent.pid), 30, interval=0.1)
        waited = time.monotonic() - sent
        run = agent.wait(60) if ended else None
    finally:
        agent.kill()
    assert run is not None, f"still running {waited:.0f} s after SIGTERM"
    assert run.returncode == 143, run.explain()
    # It was stopped while looking up: no listing was stored.
    assert not (out / "_bt-agent" / "huge-manifest" / "listing.json").exists()
