"""Which objects a job reads (docs/design.md §1.3) and where their outputs go (§1.9), end to end.

Gzip objects of several members, manifests (with an entry whose object is missing), more
than one listing page of nested keys with an empty object among them, outputs written under
the input prefix (a second run must not read them as inputs), and an empty input prefix.
The model echoes, so an output is its input as AssembleWith joins it.
"""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import orjson
import pytest

from tests.support.runjob import (
    MIB,
    body_counts,
    get_objects,
    line,
    local_outputs,
    logged_counts,
    output_keys,
    output_sizes,
    put_objects,
    request_bodies,
    run_agent,
    run_in_process,
    transform_job,
)
from tests.support.servers import ModelServer, SeaweedFS

pytestmark = pytest.mark.integration


def csv_lines(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    return [
        b"%d,%d,%s\n" % (seed, n, rng.randbytes(rng.randrange(80)).hex().encode())
        for n in range(count)
    ]


def test_gzip_objects_of_concatenated_members_are_read_decompressed(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str, model: ModelServer, tmp_path: Path
) -> None:
    lines = csv_lines(1, 20_000)  # about 1.7 MiB: two bodies of at most 1 MiB
    text = b"".join(lines)
    members = gzip.compress(b"".join(lines[:7_000])) + gzip.compress(b"".join(lines[7_000:]))
    put_objects(
        s3_server.sync_client(), bucket, {"in/data.csv.gz": members, "in/empty.csv.gz": b""}
    )
    job = transform_job(
        "gzip",
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out",
        model_url=model.url,
        compression="Gzip",
        split_type="Line",
        batch_strategy="MultiRecord",
        max_payload_mb=1,
        assemble_with="Line",
    )

    run = run_in_process(job, tmp_path)

    assert run.returncode == 0, run.explain()
    client = s3_server.sync_client()
    outputs = get_objects(client, bucket, output_keys(client, bucket, "out/"))
    assert outputs == {"out/data.csv.gz.out": text, "out/empty.csv.gz.out": b""}
    bodies = request_bodies([line(data) for data in lines], "MultiRecord", MIB)
    assert len(bodies) == 2
    assert logged_counts(model.requests()) == body_counts(bodies)
    assert run.file(f"s3://{bucket}/in/data.csv.gz")["InputBytes"] == len(text)


@pytest.mark.parametrize("missing", [False, True], ids=["complete", "missing-entry"])
def test_manifest_file_lists_the_inputs(
    missing: bool,
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    model: ModelServer,
    tmp_path: Path,
) -> None:
    contents = {
        name: b"".join(csv_lines(n, 5)) for n, name in enumerate(["c.csv", "deep/b.csv", "a.csv"])
    }
    entries = list(contents)
    if missing:
        entries.insert(1, "gone.csv")
    manifest = [{"prefix": f"s3://{bucket}/data/"}, *entries]
    objects = {f"data/{name}": data for name, data in contents.items()}
    objects["data/unlisted.csv"] = b"not in the manifest\n"
    objects["manifests/job.manifest"] = orjson.dumps(manifest)
    put_objects(s3_server.sync_client(), bucket, objects)
    job = transform_job(
        "manifest",
        f"s3://{bucket}/manifests/job.manifest",
        f"s3://{bucket}/out/",
        model_url=model.url,
        data_type="ManifestFile",
        split_type="Line",
    )

    run = run_in_process(job, tmp_path)

    client = s3_server.sync_client()
    outputs = get_objects(client, bucket, output_keys(client, bucket, "out/"))
    assert outputs == {f"out/{name}.out": data for name, data in contents.items()}
    assert run.summary is not None
    assert [entry["Input"] for entry in run.summary["Files"]] == [
        f"s3://{bucket}/data/{name}" for name in entries
    ]
    for name in contents:
        assert run.file(f"s3://{bucket}/data/{name}")["Status"] == "Completed"
    if not missing:
        assert (run.returncode, run.status) == (0, "Completed"), run.explain()
        return
    assert (run.returncode, run.status) == (1, "Failed"), run.explain()
    gone = run.file(f"s3://{bucket}/data/gone.csv")
    assert gone["Status"] == "Failed"
    assert f"s3://{bucket}/data/gone.csv does not exist" in gone["FailureReason"]
    assert "manifest element 2" in gone["FailureReason"]


def test_more_than_one_listing_page_of_nested_keys(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str, model: ModelServer, tmp_path: Path
) -> None:
    objects = {f"in/{n % 7}/deeper/obj-{n:04d}.txt": b"%d\n" % n for n in range(1_010)}
    objects["in/3/empty.txt"] = b""
    put_objects(s3_server.sync_client(), bucket, objects)
    job = transform_job(
        "pagination",
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out",
        model_url=model.url,
        split_type="Line",
        max_concurrent=32,
    )

    run = run_agent(job, tmp_path)

    assert run.returncode == 0, run.explain()
    assert run.summary is not None and run.summary["FilesCompleted"] == len(objects)
    client = s3_server.sync_client()
    sizes = output_sizes(client, bucket, "out/")
    expected = {f"out/{key.removeprefix('in/')}.out": data for key, data in objects.items()}
    assert sizes == {key: len(data) for key, data in expected.items()}
    sample = random.Random(0).sample(sorted(expected), 40) + ["out/3/empty.txt.out"]
    assert get_objects(client, bucket, sample) == {key: expected[key] for key in sample}
    assert len(model.requests()) == len(objects) - 1  # the empty object sends nothing


@pytest.mark.parametrize(
    ("storage", "source", "output"),
    [("s3", "in/", "in/out"), ("s3", "data", "data-out/"), ("local", "in/", "in/out")],
    ids=["output-under-input", "input-is-a-name-prefix", "local-output-under-input"],
)
def test_outputs_under_the_input_prefix_are_not_inputs(
    storage: str,
    source: str,
    output: str,
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    model: ModelServer,
    tmp_path: Path,
) -> None:
    """A second run finds the first run's outputs under its input prefix, and skips them."""
    keys = [f"{source.rstrip('/')}/{name}" for name in ("one.csv", "two/three.csv")]
    if storage == "local":
        root = tmp_path / "data"
        for key in keys:
            (root / key).parent.mkdir(parents=True, exist_ok=True)
            (root / key).write_bytes(key.encode() + b"\n")
        base, inputs = f"{root}/", [f"file://{root}/{key}" for key in keys]
    else:
        put_objects(s3_server.sync_client(), bucket, {key: key.encode() + b"\n" for key in keys})
        base, inputs = f"s3://{bucket}/", [f"s3://{bucket}/{key}" for key in keys]
    job = transform_job(
        "overlap", base + source, base + output, model_url=model.url, split_type="Line"
    )
    directory = source[: source.rfind("/") + 1]  # outputs are named from here (docs/design.md §1.9)
    out = output.rstrip("/") + "/"
    expected = {f"{out}{key.removeprefix(directory)}.out": key.encode() + b"\n" for key in keys}

    first = run_in_process(job, tmp_path)
    assert first.returncode == 0, first.explain()
    assert sorted(first.files()) == sorted(inputs)
    model.reset()
    # A new job name is a new run with nothing to resume: the first run's outputs now lie
    # under the input prefix, and must not be listed as inputs.
    again = transform_job(
        "overlap-again", base + source, base + output, model_url=model.url, split_type="Line"
    )
    second = run_in_process(again, tmp_path)
    assert second.returncode == 0, second.explain()
    listing_key = f"{out}_bt-agent/overlap-again/listing.json"
    if storage == "local":
        listing = orjson.loads((root / listing_key).read_bytes())
    else:
        client = s3_server.sync_client()
        listing = orjson.loads(get_objects(client, bucket, [listing_key])[listing_key])
    separator = "" if storage == "local" else "/"
    at = f"{listing['Scheme']}://{listing['Bucket']}{separator}"
    listed = [
        at + (e[3]["Key"] if len(e) > 3 else listing["KeyPrefix"] + e[0]) for e in listing["Files"]
    ]
    assert sorted(listed) == sorted(inputs)
    # An S3 output made from the same input version with the same settings is recorded as
    # done, not computed again (its metadata says so); local outputs carry no metadata.
    assert len(model.requests()) == (len(inputs) if storage == "local" else 0)
    if storage == "local":
        written = {out + name: data for name, data in local_outputs(root / out).items()}
    else:
        client = s3_server.sync_client()
        written = get_objects(client, bucket, output_keys(client, bucket, out))
    assert written == expected


def test_an_empty_input_prefix_fails_the_job(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str, model: ModelServer, tmp_path: Path
) -> None:
    put_objects(s3_server.sync_client(), bucket, {"elsewhere/x.csv": b"1\n", "in/folder/": b""})
    job = transform_job("empty", f"s3://{bucket}/in/", f"s3://{bucket}/out", model_url=model.url)

    run = run_agent(job, tmp_path)

    assert (run.returncode, run.status) == (1, "Failed"), run.explain()
    assert run.summary is not None
    assert run.summary["FailureReason"] == f"no objects found under s3://{bucket}/in/"
    assert run.summary["Files"] == []
    assert f"no objects found under s3://{bucket}/in/" in run.log
    assert output_keys(s3_server.sync_client(), bucket, "out") == []
