"""The model's start-up beside the listing: what the summary's ``Phases`` say.

``python -m bench.startup [--objects N] [--startup 0 2 5] [--repeat 3]``.

SeaweedFS holds ``--objects`` small objects under one prefix (a listing of several pages);
the example model server, started by ``Agent.ModelCommand``, answers ``/ping`` 503 for
``--startup`` seconds (a model loading its weights). Each run's summary gives
``ListingSeconds``, ``ModelStartupSeconds`` and ``FirstRequestSeconds``; the table prints
their medians, and the ratio of the two phases' sum (what the first request waited for
when the model was started only after the listing) to ``FirstRequestSeconds`` (what it
waits for now, with both at once). Times are printed, never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]

from tests.support.processes import free_port_block  # noqa: E402
from tests.support.servers import SeaweedFS  # noqa: E402  (the test harness's launchers)

BUCKET = "bt-bench-startup"


def _job(output: str, port: int, startup: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "examples.model_server", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--ping-fail-seconds", str(startup)]
    return {
        "TransformJobName": "bench-startup",
        "TransformInput": {
            "DataSource": {
                "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/in/"}
            },
            "ContentType": "text/csv",
            "SplitType": "Line",
        },
        "TransformOutput": {"S3OutputPath": output},
        "MaxConcurrentTransforms": 8,
        "Agent": {"ModelUrl": f"http://127.0.0.1:{port}", "ModelCommand": command},
    }


def _run(env: dict[str, str], directory: Path, job: dict[str, Any]) -> dict[str, Any]:
    path = directory / "job.json"
    path.write_bytes(orjson.dumps(job))
    summary = directory / "summary.json"
    argv = [sys.executable, "-m", "agent", "--job", str(path), "--summary", str(summary)]
    subprocess.run(argv, cwd=ROOT, env=env, check=True, stderr=subprocess.DEVNULL)
    phases: dict[str, Any] = orjson.loads(summary.read_bytes())["Phases"]
    return phases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=3000)
    parser.add_argument("--startup", type=float, nargs="+", default=[0.0, 2.0, 5.0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        server = SeaweedFS(root / "seaweedfs")
        server.start()
        try:
            s3 = server.sync_client()
            s3.create_bucket(Bucket=BUCKET)
            with ThreadPoolExecutor(16) as pool:
                keys = [f"in/part-{n:06d}.csv" for n in range(args.objects)]
                list(pool.map(lambda k: s3.put_object(Bucket=BUCKET, Key=k, Body=b"1,2\n"), keys))
            env = {**server.env(), "PYTHONPATH": str(ROOT)}
            port = free_port_block(1)
            print(f"{args.objects} objects; medians of {args.repeat} runs (seconds)")
            print(f"{'startup':>8} {'listing':>8} {'model':>8} {'first req':>10} {'sum':>8} ratio")
            for startup in args.startup:
                rows = []
                for n in range(args.repeat):
                    case = root / f"case-{startup}-{n}"
                    case.mkdir()
                    output = f"s3://{BUCKET}/out-{startup}-{n}/"
                    rows.append(_run(env, case, _job(output, port, startup)))
                listing = statistics.median(r["ListingSeconds"] for r in rows)
                model = statistics.median(r["ModelStartupSeconds"] for r in rows)
                first = statistics.median(r["FirstRequestSeconds"] for r in rows)
                both = listing + model
                print(
                    f"{startup:>8g} {listing:>8.2f} {model:>8.2f} {first:>10.2f} {both:>8.2f} "
                    f"{both / first:.2f}"
                )
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
