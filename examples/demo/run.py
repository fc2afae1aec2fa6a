"""``make demo``: a real job on this machine, S3 in, model server, S3 out.

It starts SeaweedFS (an S3 server, on 127.0.0.1 only), uploads a generated data set —
several CSV files, one under a nested key, and one gzip file — and runs
``bt-agent --job examples/demo/job.json`` (then ``job-gzip.json``), which start the
example model server themselves through ``Agent.ModelCommand``. It prints each job's
summary and the head of one output, then stops everything.

The server launcher is the one the integration tests use (``tests/support/servers.py``), so the
demo exercises the same code the suite proves.
"""

from __future__ import annotations

import gzip
import os
import random
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the repository, for the test harness package

from tests.support.servers import SeaweedFS  # noqa: E402  (the test harness's launcher)

BUCKET = "bt-demo"
MODEL_PORT = 18089
ROWS_PER_FILE = 120_000


def _rows(rng: random.Random, count: int) -> bytes:
    lines = [
        f"{rng.randrange(10**8)},{rng.random():.6f},{rng.choice('ABCDE')},{rng.randrange(99)}\n"
        for _ in range(count)
    ]
    return "".join(lines).encode()


def _dataset() -> dict[str, bytes]:
    rng = random.Random(2026)
    objects = {f"input/part-{i:03d}.csv": _rows(rng, ROWS_PER_FILE) for i in range(3)}
    objects["input/2026/11/part-003.csv"] = _rows(rng, ROWS_PER_FILE)
    objects["input-gz/events.csv.gz"] = gzip.compress(_rows(rng, ROWS_PER_FILE))
    return objects


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _run_job(job: str, env: dict[str, str]) -> dict[str, object]:
    summary = Path(tempfile.mkstemp(suffix=".json")[1])
    print(f"\n$ bt-agent --job {job}", flush=True)
    code = subprocess.call(
        [sys.executable, "-m", "agent", "--job", job, "--summary", str(summary)],
        cwd=ROOT,
        env=env,
    )
    result: dict[str, object] = orjson.loads(summary.read_bytes())
    summary.unlink()
    if code != 0:
        raise SystemExit(f"bt-agent exited {code}: {result.get('FailureReason')}")
    return result


def _show(summary: dict[str, object]) -> None:
    files = summary["Files"]
    assert isinstance(files, list)
    print(
        f"{summary['TransformJobName']}: {summary['TransformJobStatus']}, "
        f"{summary['FilesCompleted']}/{summary['FilesTotal']} files, "
        f"{summary['Records']} records in {summary['Requests']} requests, "
        f"{summary['InputBytes']} bytes in {summary['TransformSeconds']} s "
        f"= {summary['InputMBPerSecond']} MB/s"
    )
    for entry in files:
        print(f"  {entry['Input']} -> {entry['Output']} ({entry['Records']} records)")
    phases = summary["Phases"]
    assert isinstance(phases, dict)
    print("  phases: " + ", ".join(f"{name} {seconds}" for name, seconds in phases.items()))


def main() -> int:
    if not _port_free(MODEL_PORT):
        print(f"port {MODEL_PORT} (the demo model server's) is in use; free it", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="bt-demo-") as scratch:
        server = SeaweedFS(Path(scratch) / "seaweedfs")
        server.start()
        try:
            env = {**os.environ, **server.env()}
            env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
            print(f"SeaweedFS S3 on {server.endpoint_url}; uploading the demo data set")
            s3 = server.sync_client()
            s3.create_bucket(Bucket=BUCKET)
            for key, data in _dataset().items():
                s3.put_object(Bucket=BUCKET, Key=key, Body=data)
                print(f"  s3://{BUCKET}/{key} ({len(data)} bytes)")
            for job in ("examples/demo/job.json", "examples/demo/job-gzip.json"):
                _show(_run_job(job, env))
            head = s3.get_object(Bucket=BUCKET, Key="output/2026/11/part-003.csv.out")
            lines = head["Body"].read().splitlines()
            print(f"\nhead of s3://{BUCKET}/output/2026/11/part-003.csv.out ({len(lines)} lines):")
            for line in lines[:5]:
                print(f"  {line.decode()}")
        finally:
            server.stop()
    print("\nSeaweedFS and the model server are stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
