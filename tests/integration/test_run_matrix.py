"""Every SplitType × BatchStrategy × AssembleWith, end to end through ``python -m agent``.

Each case writes three files (a big one cut into several bodies, a small one of edge cases
under a nested key, an empty one), runs the job against the echo model answering after a
random delay (so answers come back out of order), and checks, against expectations worked
out here from docs/design.md §2 and §1.8:

* every ``.out`` is byte-exact, and nothing else was written;
* the model received exactly the expected bodies: same sha256 and length, as a multiset
  over the job, so no body exceeded the bound and none mixed two files (every file's bytes
  are its own); the empty file sent nothing;
* the summary's per-file record and request counts.

Most cases use S3 (SeaweedFS); those with SingleRecord and AssembleWith Line use local
paths. MaxPayloadInMB 0 cases stream bodies: one of more than a read chunk must arrive
with chunked encoding.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from tests.support.runjob import (
    MIB,
    Record,
    assembled,
    body_counts,
    file_bytes,
    get_objects,
    header_names,
    line,
    local_outputs,
    logged_counts,
    out_of_order,
    output_keys,
    put_objects,
    recordio,
    request_bodies,
    run_in_process,
    tfrecord,
    transform_job,
    whole,
)
from tests.support.servers import ModelServer, SeaweedFS

pytestmark = pytest.mark.integration

SPLIT_TYPES = ("None", "Line", "RecordIO", "TFRecord")
STRATEGIES = ("MultiRecord", "SingleRecord")
ASSEMBLE = ("None", "Line")
CONCURRENCY = 4
READ_CHUNK_BYTES = 4 * MIB  # StorageSettings.read_chunk_bytes: a bigger body spans chunks
NO_NEWLINE = bytes.maketrans(b"\n", b" ")

CASES = [
    (split, strategy, assemble, 1)
    for split in SPLIT_TYPES
    for strategy in STRATEGIES
    for assemble in ASSEMBLE
] + [
    ("None", "MultiRecord", "None", 0),
    ("None", "SingleRecord", "Line", 0),
    ("Line", "MultiRecord", "Line", 0),
    ("Line", "SingleRecord", "None", 0),
    ("RecordIO", "MultiRecord", "None", 0),
    ("TFRecord", "SingleRecord", "Line", 0),
]


def _records(
    make: Callable[[bytes], Record], rng: random.Random, total: int, largest: int
) -> list[Record]:
    records: list[Record] = []
    size = 0
    while size < total:
        records.append(make(rng.randbytes(rng.randrange(largest))))
        size += len(records[-1].raw)
    return records


def _text_line(data: bytes) -> Record:
    return line(data.translate(NO_NEWLINE) + b"\n")


def dataset(split_type: str, seed: int, bound: int) -> dict[str, list[Record]]:
    """Three files of ``split_type`` records: big (several bodies), edge cases, empty.

    With a bound, no record exceeds it (nor, for None, does the object); without, the big
    file is larger than a read chunk, so its bodies must stream.
    """
    rng = random.Random(seed)
    total = 9 * MIB // 2 if bound == 0 else 3 * bound // 2
    largest = 400 * 1024 if bound == 0 else 64 * 1024
    files: dict[str, list[Record]] = {"empty.bin": []}
    if split_type == "None":
        files["big.bin"] = whole(rng.randbytes(total if bound == 0 else bound - 1))
        files["a/b/small.bin"] = whole(b"one small object\n")
    elif split_type == "Line":
        files["big.bin"] = _records(_text_line, rng, total, largest)
        edge = [b"\n", b"carriage return\r\n", b"\r\n", b"the last line has no newline"]
        files["a/b/small.bin"] = [line(data) for data in edge]
    elif split_type == "RecordIO":
        files["big.bin"] = _records(recordio, rng, total, largest)
        multi = recordio(b"first part", rng.randbytes(37), b"last")
        files["a/b/small.bin"] = [recordio(b""), multi, recordio(b"abc\n"), recordio(b"xy")]
    else:
        files["big.bin"] = _records(tfrecord, rng, total, largest)
        files["a/b/small.bin"] = [tfrecord(b""), tfrecord(b"hello"), tfrecord(b"line\n")]
    return files


@dataclass
class Inputs:
    """One dataset, stored once per module and shared by the cases that read it."""

    files: dict[str, list[Record]]
    source_uri: str
    source: Path | None  # the local directory, or None for S3


@pytest.fixture(scope="module")
def matrix_bucket(s3_server: SeaweedFS) -> Iterator[str]:
    """One bucket for the module: every dataset is uploaded once, each case has its outputs."""
    client = s3_server.sync_client()
    name = "bt-test-run-matrix"
    client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        if s3_server.running():
            with contextlib.suppress(BotoCoreError, ClientError):
                client.delete_bucket(Bucket=name)
        client.close()


@pytest.fixture(scope="module")
def inputs(
    s3_server: SeaweedFS, matrix_bucket: str, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str, int, bool], Inputs]:
    """``inputs(split_type, bound_mb, local)``: the dataset, written on first use."""
    stored: dict[tuple[str, int, bool], Inputs] = {}

    def get(split_type: str, bound_mb: int, local: bool) -> Inputs:
        key = (split_type, bound_mb, local)
        if key not in stored:
            files = dataset(split_type, SPLIT_TYPES.index(split_type), bound_mb * MIB)
            name = f"{split_type}-{bound_mb}"
            if local:
                source = tmp_path_factory.mktemp(name)
                for relative, records in files.items():
                    (source / relative).parent.mkdir(parents=True, exist_ok=True)
                    (source / relative).write_bytes(file_bytes(records))
                stored[key] = Inputs(files, f"file://{source}/", source)
            else:
                objects = {f"{name}/{rel}": file_bytes(recs) for rel, recs in files.items()}
                put_objects(s3_server.sync_client(), matrix_bucket, objects)
                stored[key] = Inputs(files, f"s3://{matrix_bucket}/{name}/", None)
        return stored[key]

    return get


@pytest.mark.parametrize(
    ("split_type", "strategy", "assemble_with", "bound_mb"),
    CASES,
    ids=[f"{s}-{b}-{a}-{m}MB" for s, b, a, m in CASES],
)
def test_output_is_byte_exact_for_every_combination(
    split_type: str,
    strategy: str,
    assemble_with: str,
    bound_mb: int,
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    matrix_bucket: str,
    inputs: Callable[[str, int, bool], Inputs],
    model: ModelServer,
    tmp_path: Path,
) -> None:
    bound = bound_mb * MIB
    local = strategy == "SingleRecord" and assemble_with == "Line" and bound_mb == 1
    data = inputs(split_type, bound_mb, local)
    case = f"{split_type}-{strategy}-{assemble_with}-{bound_mb}"
    output = tmp_path / "out" if local else None
    output_uri = str(output) if output else f"s3://{matrix_bucket}/out-{case}"
    model.control(random_delay_ms=15)
    job = transform_job(
        f"matrix-{case}",
        data.source_uri,
        output_uri,
        model_url=model.url,
        split_type=split_type,
        batch_strategy=strategy,
        assemble_with=assemble_with,
        max_payload_mb=bound_mb,
        max_concurrent=CONCURRENCY,
    )

    run = run_in_process(job, tmp_path)

    assert run.returncode == 0, run.explain()
    assert run.status == "Completed"
    files = data.files
    bodies = {name: request_bodies(records, strategy, bound) for name, records in files.items()}
    expected = {f"{name}.out": assembled(bodies[name], assemble_with) for name in files}
    if output is not None:
        written = local_outputs(output)
    else:
        client = s3_server.sync_client()
        prefix = f"out-{case}/"
        found = get_objects(client, matrix_bucket, output_keys(client, matrix_bucket, prefix))
        written = {key.removeprefix(prefix): value for key, value in found.items()}
    assert sorted(written) == sorted(expected)
    for name, content in expected.items():
        assert written[name] == content, f"{name}: {len(written[name])} bytes, not {len(content)}"
    for name, records in files.items():
        entry = run.file(data.source_uri + name)
        assert (entry["Records"], entry["Requests"]) == (len(records), len(bodies[name])), name

    requests = model.requests()
    everything = [body for name in files for body in bodies[name]]
    assert logged_counts(requests) == body_counts(everything)
    if bound:
        assert max(entry["body_bytes"] for entry in requests) <= bound
    assert model.log()["max_in_flight"] <= CONCURRENCY
    if len(requests) > 20:  # answers did come back out of order, and the output is in order
        assert out_of_order(requests) > 0
    for entry in requests:
        if entry["body_bytes"] > READ_CHUNK_BYTES:  # read in several chunks: streamed
            assert header_names(entry).get("transfer-encoding") == "chunked"
    if bound == 0 and strategy == "MultiRecord":
        assert max(entry["body_bytes"] for entry in requests) > READ_CHUNK_BYTES
