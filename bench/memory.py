"""Peak memory of the agent on big inputs: ``python -m bench.memory [--gib 1 2]``.

For each size it uploads one Line-split CSV object of that size to SeaweedFS, runs
``bt-agent --job …`` (S3 in, echo model, S3 out: the output is as big as the input) and
reads the agent process's own peak RSS from ``wait4``. The bound to meet is
``200 MB + 3 × MaxConcurrentTransforms × MaxPayload`` (272 MB at 4 × 6 MiB), and the
figure should be flat as the input doubles. Time is printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]

from tests.support.servers import ModelServer, SeaweedFS  # noqa: E402  (the test harness's launchers)

MIB = 1 << 20
BUCKET = "bt-bench-memory"
PIECE = 64 * MIB


def _piece(seed: int) -> bytes:
    line = b"%012d,0.123456789,alpha,beta,gamma,delta,epsilon,zeta,eta,theta,iota,kappa\n"
    rows = PIECE // (len(line) + 8)
    data = b"".join(line % (seed * rows + i) for i in range(rows))
    return data[: data.rfind(b"\n") + 1]


def _upload(client: Any, key: str, size: int) -> int:
    """Upload about ``size`` bytes of CSV in 64 MiB parts; return the exact size."""
    upload = client.create_multipart_upload(Bucket=BUCKET, Key=key)
    parts, total, number = [], 0, 1
    while total < size:
        data = _piece(number)
        part = client.upload_part(
            Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], PartNumber=number, Body=data
        )
        parts.append({"PartNumber": number, "ETag": part["ETag"]})
        total += len(data)
        number += 1
    client.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    return total


def _job(path: Path, key: str, model_url: str, concurrency: int, payload_mb: int) -> None:
    job = {
        "TransformJobName": "bench-memory",
        "MaxConcurrentTransforms": concurrency,
        "MaxPayloadInMB": payload_mb,
        "BatchStrategy": "MultiRecord",
        "TransformInput": {
            "DataSource": {
                "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/{key}"}
            },
            "ContentType": "text/csv",
            "SplitType": "Line",
        },
        "TransformOutput": {"S3OutputPath": f"s3://{BUCKET}/out-{key}/", "AssembleWith": "None"},
        "Agent": {"ModelUrl": model_url},
    }
    path.write_bytes(orjson.dumps(job))


def _run_agent(job: Path, env: dict[str, str]) -> tuple[int, float, int]:
    """Exit code, seconds and the agent process's peak RSS in bytes (from its summary).

    The agent reads its own ``VmHWM``: ``wait4``'s ``ru_maxrss`` would also count this
    (large) benchmark process, which the child is a copy of until it execs.
    """
    summary = job.with_suffix(".summary.json")
    started = time.monotonic()
    code = subprocess.call(
        [sys.executable, "-m", "agent", "--job", str(job), "--summary", str(summary)],
        cwd=ROOT,
        env=env,
        stderr=subprocess.DEVNULL,
    )
    seconds = time.monotonic() - started
    peak = int(orjson.loads(summary.read_bytes())["PeakRSSBytes"]) if code == 0 else 0
    return code, seconds, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--payload-mb", type=int, default=6)
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="for the agent"
    )
    args = parser.parse_args()
    bound = 200e6 + 3 * args.concurrency * args.payload_mb * MIB
    with tempfile.TemporaryDirectory(prefix="bt-bench-") as scratch:
        root = Path(scratch)
        s3_server = SeaweedFS(root / "seaweedfs")
        model = ModelServer(root / "model.log")
        s3_server.start()
        model.start()
        try:
            env = {**os.environ, **s3_server.env(), **dict(e.split("=", 1) for e in args.env)}
            s3 = s3_server.sync_client()
            s3.create_bucket(Bucket=BUCKET)
            shape = f"{args.concurrency} x {args.payload_mb} MiB"
            print(f"bound: 200 MB + 3 x {shape} = {bound / 1e6:.0f} MB")
            print(f"{'input':>10} {'seconds':>8} {'MB/s':>8} {'peak RSS':>10}  within bound")
            for gib in args.gib:
                key = f"input-{gib:g}gib.csv"
                size = _upload(s3, key, int(gib * 1024 * MIB))
                job = root / f"job-{gib:g}.json"
                _job(job, key, model.url, args.concurrency, args.payload_mb)
                code, seconds, rss = _run_agent(job, env)
                if code != 0:
                    print(f"bt-agent exited {code} for {key}", file=sys.stderr)
                    return 1
                print(
                    f"{size / 1e9:9.2f}G {seconds:8.1f} {size / 1e6 / seconds:8.1f} "
                    f"{rss / 1e6:8.1f}MB  {'yes' if rss <= bound else 'NO'}"
                )
                s3.delete_object(Bucket=BUCKET, Key=key)
        finally:
            model.stop()
            s3_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
