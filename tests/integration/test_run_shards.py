"""Shards of one big file across instances (README "Shards of one big file", docs/design.md
§4.10): three static instances cut one ~48 MiB file into 4 MiB shards and write one `.out`
equal to a single unsharded instance's; a Lease instance killed mid-shard costs nothing
but its shard; a stopped run redoes only its unfinished shards.

The files come from ``tests/support/split.py``: a Line file with CRLF and LF, empty lines and
a few 300 KiB lines; a TFRecord file whose payloads hold whole valid frames; a RecordIO
file whose payloads hold aligned magic and record-starting headers. The model echoes each
body and bodies are MultiRecord, so every output is also checked against its input.
"""

from __future__ import annotations

import hashlib
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.split import make_splitter
from tests.support.multirun import (
    enable_versioning,
    holder_pid,
    leases,
    list_keys,
    output_versions,
    state_prefix,
    wait_for,
)
from tests.support.record_model import RecordModel, token
from tests.support.runjob import (
    MIB,
    Agent,
    AgentRun,
    file_bytes,
    get_objects,
    open_uploads,
    put_objects,
    recordio,
    run_agent,
    run_in_process,
    start_agent,
    tfrecord,
    transform_job,
)
from tests.support.servers import ModelServer, SeaweedFS
from tests.support.split import line_stream, recordio_stream, tfrecord_stream

pytestmark = pytest.mark.integration

INSTANCES = 3
SHARD_MB = 4
PAYLOAD_MB = 1
# How often a payload hides frames: often enough that some shard start is fooled and
# redone (the test asserts one is), seldom enough that most shards are not redone.
HIDDEN = 0.25

Builder = Callable[..., tuple[bytes, list[int]]]
KINDS: dict[str, tuple[Builder, str, str]] = {
    # split type: (builder, AssembleWith, key)
    "Line": (line_stream, "Line", "big.csv"),
    "TFRecord": (tfrecord_stream, "None", "big.tfrecord"),
    "RecordIO": (recordio_stream, "None", "big.rec"),
}


def build(split_type: str, size: int, seed: int = 7) -> tuple[bytes, list[int]]:
    builder = KINDS[split_type][0]
    if split_type == "Line":
        return builder(size, seed)
    return builder(size, seed, hidden=HIDDEN)


def job_for(
    split_type: str, bucket: str, model: ModelServer, out: str, **agent: Any
) -> dict[str, Any]:
    job = transform_job(
        f"shards-{split_type}-{out}",
        f"s3://{bucket}/in/",
        f"s3://{bucket}/{out}",
        model_url=model.url,
        split_type=split_type,
        assemble_with=KINDS[split_type][1],
        batch_strategy="MultiRecord",
        max_payload_mb=PAYLOAD_MB,
        max_concurrent=4,
        agent=agent,
    )
    job["TransformResources"] = {"InstanceCount": INSTANCES, "InstanceType": "ml.m5.xlarge"}
    return job


def shard_entries(run: AgentRun) -> list[dict[str, Any]]:
    """The shards an instance did, from its own summary (outputs under the state prefix)."""
    assert run.summary is not None, run.explain()
    return [e for e in run.summary["Files"] if "/shards/" in e["Output"]]


@pytest.mark.parametrize("split_type", ["Line", "TFRecord", "RecordIO"])
def test_three_static_instances_share_one_big_files_shards_and_write_the_one_instance_out(
    split_type: str,
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    model: ModelServer,
    tmp_path: Path,
) -> None:
    data, _ = build(split_type, 48 * MIB)
    key = KINDS[split_type][2]
    client = s3_server.sync_client()
    put_objects(client, bucket, {f"in/{key}": data, "in/small.txt": b""})

    # One instance, no shards: the reference output.
    reference = run_agent(job_for(split_type, bucket, model, "ref"), tmp_path, timeout=180)
    assert (reference.returncode, reference.status) == (0, "Completed"), reference.explain()
    expected = get_objects(client, bucket, [f"ref/{key}.out"])[f"ref/{key}.out"]

    job = job_for(split_type, bucket, model, "out", ShardSizeMB=SHARD_MB)
    agents = [
        start_agent(job, tmp_path, args=["--instance-index", str(i), "--instance-count", "3"])
        for i in range(INSTANCES)
    ]
    try:
        runs = [agent.wait(180) for agent in agents]
    finally:
        for agent in agents:
            agent.kill()
    for run in runs:
        assert run.returncode == 0, run.explain()
    out = get_objects(client, bucket, [f"out/{key}.out"])[f"out/{key}.out"]
    assert out == expected  # byte for byte what one unsharded instance wrote
    if split_type != "Line":
        assert out == data  # echo, AssembleWith None: the input itself
    # Every instance did a fair share of the 12 shards (LPT over equal shards: 4 each).
    done = [len(shard_entries(run)) for run in runs]
    assert sum(done) >= 12 and min(done) >= 3, done
    # Each instance's own summary counts its shards apart from its files, and its work
    # once: the shards' bytes add up to the file (Line: no shard is ever done again).
    for run, shards in zip(runs, done, strict=True):
        assert run.summary is not None and run.summary["Shards"] == shards
        assert run.summary["FilesTotal"] == len(run.summary["Files"]) - shards
    if split_type == "Line":
        assert sum(run.summary["InputBytes"] for run in runs if run.summary) == len(data)
    log = "".join(run.log for run in runs)
    assembled = [run for run in runs if f"out/{key}.out" in str(run.summary)]
    assert assembled, "no instance assembled the .out"
    if split_type == "Line":
        assert "done again" not in log  # a newline always ends a line: never fooled
    else:
        assert "done again from byte" in log  # a hidden frame fooled a shard's start
    # The job summary counts the shards; the file's entry says how many it had.
    state = state_prefix(job)
    summary = orjson.loads(
        get_objects(client, bucket, [state + "summary.json"])[state + "summary.json"]
    )
    count = -(-len(data) // (SHARD_MB * MIB))  # 12, or 13 when the builder went over
    assert summary["TransformJobStatus"] == "Completed" and summary["Shards"] == count
    entry = next(e for e in summary["Files"] if e["Input"].endswith(key))
    assert entry["Shards"] == count and entry["Status"] == "Completed"
    # Nothing of the shards is left: no shard object, no open upload.
    assert not [k for k in list_keys(client, bucket, state) if "/shards/" in k]
    assert not open_uploads(client, bucket)


def shard_bodies(data: bytes, bounds: list[int], start: int, end: int) -> Counter[str]:
    """The request bodies (their SHA-256) of the shard ``[start, end)`` of ``data``."""
    first = next(b for b in bounds if b >= start)
    last = next(b for b in bounds if b >= end)
    splitter = make_splitter("Line", "MultiRecord", PAYLOAD_MB * MIB)
    bodies = [*splitter.feed(data[first:last]), *splitter.finish()]
    return Counter(hashlib.sha256(bytes(body.data)).hexdigest() for body in bodies)


def sent(model: ModelServer) -> Counter[str]:
    return Counter(
        request["body_sha256"] for request in model.requests() if request["path"] == "/invocations"
    )


def test_sigterm_then_resume_redoes_only_the_unfinished_shards(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    model: ModelServer,
    tmp_path: Path,
) -> None:
    data, bounds = line_stream(24 * MIB, 11)
    client = s3_server.sync_client()
    put_objects(client, bucket, {"in/big.csv": data})
    job = job_for("Line", bucket, model, "out", ShardSizeMB=2)
    job["MaxConcurrentTransforms"] = 1
    model.control(delay_ms=40)  # about 25 bodies a second: a stop lands mid-file
    state = state_prefix(job)

    def shard_records() -> list[str]:
        return [
            k for k in list_keys(client, bucket, state + "done/") if "." in k.rsplit("/")[-1][:-5]
        ]

    agent = start_agent(job, tmp_path)
    try:
        wait_for(lambda: len(shard_records()) >= 3, 60, "three shards done", agent)
        agent.signal(signal.SIGTERM)
        first = agent.wait(60)
    finally:
        agent.kill()
    assert first.returncode == 143, first.explain()
    finished = {
        e["Output"].rsplit("/", 1)[-1] for e in shard_entries(first) if e["Status"] == "Completed"
    }
    assert 3 <= len(finished) < 12, [
        (e["Output"][-25:], e["Status"], e.get("FailureReason")) for e in shard_entries(first)
    ]
    before = sent(model)
    model.reset()

    second = run_agent(job, tmp_path, timeout=180)
    assert (second.returncode, second.status) == (0, "Completed"), second.explain()
    redone = {e["Output"].rsplit("/", 1)[-1] for e in shard_entries(second)}
    assert not redone & finished  # only the unfinished shards were done again
    assert len(redone | finished) == 12, [
        (e["Output"][-25:], e["Status"], e.get("FailureReason")) for e in shard_entries(first)
    ]
    # The model's request log shows it: the second run sent exactly the bodies of the
    # shards the first did not finish.
    expected: Counter[str] = Counter()
    for name in redone:
        start, end = (int(x) for x in name.removesuffix(".out").split("-"))
        expected += shard_bodies(data, bounds, start, end)
    assert sent(model) == expected
    assert sum(before.values()) >= 1
    out = get_objects(client, bucket, ["out/big.csv.out"])["out/big.csv.out"]
    assert out.rstrip(b"\n") == data.rstrip(b"\n")


def test_a_lease_instance_killed_mid_shard_costs_only_its_shard(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    model: ModelServer,
    tmp_path: Path,
) -> None:
    # Three shards of 20 MiB, one an instance: each shard's output is a multipart upload
    # (parts of 8 MiB), and the assembly copies them server-side (UploadPartCopy).
    # No hidden frames here: a fooled start fails at once, and this test needs every
    # shard to take its time (the proof has its own tests above).
    data, _ = recordio_stream(60 * MIB, 5, hidden=0.0)
    client = s3_server.sync_client()
    enable_versioning(client, bucket)
    put_objects(client, bucket, {"in/big.rec": data})
    job = job_for(
        "RecordIO", bucket, model, "out", ShardSizeMB=20, Coordination="Lease", LeaseTTLSeconds=4
    )
    job["MaxConcurrentTransforms"] = 2
    model.control(delay_ms=300)  # a shard's 20 bodies take 3 s: its upload is open from 1.2 s
    state = state_prefix(job)

    def start(index: int) -> Agent:
        args = ["--instance-index", str(index), "--instance-count", "3"]
        return start_agent(job, tmp_path, args=args)

    # The victim starts first and holds shards before the others come (else two fast
    # instances may claim every shard); it is killed well into one, upload open.
    agents = [start(0)]
    try:
        victim = agents[0]

        def victims_shard_under_way(renewals: int) -> list[str]:
            # Renewed twice (every TTL/6): about 1.3 s into the shard, 8 MiB and more of
            # its output sent, so its multipart upload is open.
            return [
                lease["Input"]
                for lease in leases(client, bucket, job)
                if holder_pid(lease) == victim.pid
                and "[" in lease["Input"]
                and int(lease.get("Renewal", 0)) >= renewals
            ]

        wait_for(lambda: victims_shard_under_way(0), 60, "the first instance's shard", victim)
        agents += [start(1), start(2)]
        held = wait_for(
            lambda: victims_shard_under_way(2), 60, "the first instance's shard under way", *agents
        )
        victim.process.stop(grace_seconds=0)  # SIGKILL
        runs = [agent.wait(240) for agent in agents[1:]]
    finally:
        for agent in agents:
            agent.kill()
    for run in runs:
        assert run.returncode == 0, run.explain()
    # Its shard was taken over once its lease ran out, and done by another instance.
    log = "".join(run.log for run in runs)
    assert f"{held[0]}: took the lease over from" in log, log[-4000:]
    out = get_objects(client, bucket, ["out/big.rec.out"])["out/big.rec.out"]
    assert out == data
    assert output_versions(client, bucket)["out/big.rec.out"] == 1  # committed once
    assert not open_uploads(client, bucket)
    assert not [k for k in list_keys(client, bucket, state) if "/shards/" in k]


# ------------------------------------------------------------- semantics over the matrix

MATRIX = [
    (split_type, strategy, assemble_with)
    for split_type in ("Line", "RecordIO", "TFRecord")
    for strategy in ("MultiRecord", "SingleRecord")
    for assemble_with in ("Line", "None")
]


def numbered(split_type: str, count: int, pad: int) -> bytes:
    """``count`` records carrying their numbers (``RecordModel`` answers one line each)."""
    if split_type == "Line":
        return b"".join(token(n) + b"," + b"v" * (n % pad) + b"\n" for n in range(count))
    frame = recordio if split_type == "RecordIO" else tfrecord
    return file_bytes([frame(token(n) + b"p" * (n % pad)) for n in range(count)])


@pytest.mark.parametrize(("split_type", "strategy", "assemble_with"), MATRIX)
def test_a_sharded_out_and_errors_file_equal_the_unsharded_ones(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    record_model: RecordModel,
    tmp_path: Path,
    split_type: str,
    strategy: str,
    assemble_with: str,
) -> None:
    """Every SplitType × BatchStrategy × AssembleWith with a model that answers each record
    alone: the ``.out`` and the errors file (failed records, their indexes and offsets
    file-wide) of three 1 MiB shards are byte for byte the unsharded run's."""
    single = strategy == "SingleRecord"
    count = 2_500 if single else 40_000
    data = numbered(split_type, count, 2_000 if single else 100)
    assert len(data) > 2 * MIB
    bad = (0, 999, 1_000, count // 2, count - 1)
    record_model.set_bad(bad)
    client = s3_server.sync_client()
    put_objects(client, bucket, {"in/big": data})
    agent: dict[str, Any] = {"MaxFailedRecords": -1}
    if assemble_with == "Line":
        agent["FailedRecordPlaceholder"] = "FAILED"

    def run(out: str, **more: Any) -> dict[str, bytes]:
        job = transform_job(
            f"matrix-{out}",
            f"s3://{bucket}/in/",
            f"s3://{bucket}/{out}",
            model_url=record_model.url,
            split_type=split_type,
            batch_strategy=strategy,
            assemble_with=assemble_with,
            max_payload_mb=1,
            max_concurrent=8,
            agent={**agent, **more},
        )
        done = run_in_process(job, tmp_path)
        assert (done.returncode, done.status) == (0, "Completed"), done.explain()
        return get_objects(client, bucket, [f"{out}/big.out", f"{out}/big.errors.jsonl"])

    whole = run("whole")
    sharded = run("sharded", ShardSizeMB=1)
    assert sharded["sharded/big.out"] == whole["whole/big.out"]
    assert sharded["sharded/big.errors.jsonl"] == whole["whole/big.errors.jsonl"]
    assert len(whole["whole/big.errors.jsonl"].splitlines()) == len(bad)


def test_dataprocessing_works_per_shard_and_the_out_is_the_unsharded_one(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    record_model: RecordModel,
    tmp_path: Path,
) -> None:
    """InputFilter and JoinSource on CSV records, per shard: the joined ``.out`` of three
    shards equals the unsharded one."""
    data = numbered("Line", 40_000, 100)
    client = s3_server.sync_client()
    put_objects(client, bucket, {"in/big.csv": data})

    def run(out: str, **agent: Any) -> bytes:
        job = transform_job(
            f"dataproc-{out}",
            f"s3://{bucket}/in/",
            f"s3://{bucket}/{out}",
            model_url=record_model.url,
            split_type="Line",
            batch_strategy="MultiRecord",
            assemble_with="Line",
            max_payload_mb=1,
            content_type="text/csv",
            accept="text/csv",
            agent=agent,
        )
        job["DataProcessing"] = {"InputFilter": "$[0]", "JoinSource": "Input"}
        done = run_in_process(job, tmp_path)
        assert (done.returncode, done.status) == (0, "Completed"), done.explain()
        return get_objects(client, bucket, [f"{out}/big.csv.out"])[f"{out}/big.csv.out"]

    whole = run("whole")
    assert whole.splitlines()[7] == b"<r:000007>,vvvvvvv,000007"
    assert run("sharded", ShardSizeMB=1) == whole
