"""Memory, state size and stop time of a run over a huge manifest.

``python -m bench.manifest_scale [--storage s3 local] [--entries N ...] [--sigterm]``.

For each storage (``s3``: SeaweedFS; ``local``: a manifest naming a local prefix) and each
number of entries, it writes a manifest whose entries name objects that do not exist (each
lookup is a HEAD answered 404, or a ``stat`` that finds nothing, and each file fails as
missing), then:

* runs ``python -m agent --job …`` to its end and reports its peak RSS (``VmHWM`` sampled
  from ``/proc/<pid>/status`` while it runs; the summary's ``PeakRSSBytes`` where written),
  the time, and the bytes per file of ``listing.json``, the completion records (``done/``),
  the state's ``summary.json`` and the ``--summary`` file;
* with ``--sigterm``, starts it again and sends SIGTERM ``--sigterm-after`` seconds after
  start, while the manifest is being looked up (checked: ``listing.json`` is not there yet),
  and reports the seconds from SIGTERM to exit and the exit code.

Example: ``python -m bench.manifest_scale --storage local --entries 1000000 --sigterm``.
Times are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.proc import vm_hwm

ROOT = Path(__file__).resolve().parents[1]

from tests.support.servers import ModelServer, SeaweedFS  # noqa: E402  (the test harness's launchers)

BUCKET = "bt-bench-manifest"
JOB = "bench-manifest"


def _manifest(entries: int, prefix: str) -> bytes:
    keys = [f"missing/k-{n:08d}.csv" for n in range(entries)]
    return orjson.dumps([{"prefix": prefix}, *keys])


def _job(manifest_uri: str, output: str, model_url: str) -> dict[str, Any]:
    return {
        "TransformJobName": JOB,
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "ManifestFile", "S3Uri": manifest_uri}},
            "ContentType": "text/csv",
            "SplitType": "Line",
        },
        "TransformOutput": {"S3OutputPath": output},
        "Agent": {"ModelUrl": model_url},
    }


class Place:
    """Where one case's manifest, outputs and state live (S3 or a local directory)."""

    def __init__(self, storage: str, root: Path, s3: Any, entries: int, tag: str) -> None:
        self.storage, self.s3 = storage, s3
        if storage == "s3":
            self.manifest = f"s3://{BUCKET}/{tag}/manifest.json"
            self.output = f"s3://{BUCKET}/{tag}/out/"
            s3.put_object(
                Bucket=BUCKET,
                Key=f"{tag}/manifest.json",
                Body=_manifest(entries, f"s3://{BUCKET}/{tag}/in/"),
            )
            self.state_key = f"{tag}/out/_bt-agent/{JOB}/"
        else:
            base = root / tag
            (base / "in").mkdir(parents=True)
            (base / "manifest.json").write_bytes(_manifest(entries, f"{base}/in/"))
            self.manifest = f"file://{base}/manifest.json"
            self.output = f"file://{base}/out/"
            self.state_dir = base / "out" / "_bt-agent" / JOB

    def state_sizes(self) -> dict[str, int]:
        """Bytes of listing.json, done/ and summary.json under the state prefix."""
        sizes = {"listing": 0, "done": 0, "summary": 0}
        if self.storage == "s3":
            pages = self.s3.get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=BUCKET, Prefix=self.state_key):
                for item in page.get("Contents", ()):
                    self._count(sizes, item["Key"][len(self.state_key) :], int(item["Size"]))
        elif self.state_dir.exists():
            for path in self.state_dir.rglob("*"):
                if path.is_file():
                    self._count(sizes, str(path.relative_to(self.state_dir)), path.stat().st_size)
        return sizes

    @staticmethod
    def _count(sizes: dict[str, int], name: str, size: int) -> None:
        if name == "listing.json":
            sizes["listing"] += size
        elif name == "summary.json":
            sizes["summary"] += size
        elif name.startswith("done/"):
            sizes["done"] += size

    def listing_exists(self) -> bool:
        if self.storage == "s3":
            found = self.s3.list_objects_v2(Bucket=BUCKET, Prefix=self.state_key + "listing.json")
            return bool(found.get("Contents"))
        return (self.state_dir / "listing.json").exists()


def _start(job: dict[str, Any], directory: Path, env: dict[str, str]) -> tuple[Any, Path]:
    path = directory / "job.json"
    path.write_bytes(orjson.dumps(job))
    summary = directory / "summary.json"
    log = (directory / "agent.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "--job", str(path), "--summary", str(summary)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return process, summary


def _watch(process: Any, until: float | None = None) -> int:
    """Sample VmHWM until the process ends (or ``until``); the last value seen."""
    peak = 0
    while process.poll() is None and (until is None or time.monotonic() < until):
        peak = max(peak, vm_hwm(process.pid))
        time.sleep(0.05)
    return peak


def full_run(
    place: Place, entries: int, model_url: str, directory: Path, env: dict[str, str]
) -> None:
    directory.mkdir(parents=True)
    started = time.monotonic()
    process, summary_path = _start(_job(place.manifest, place.output, model_url), directory, env)
    peak = _watch(process)
    code = process.wait()
    seconds = time.monotonic() - started
    reported = None
    summary_bytes = 0
    if summary_path.exists():
        summary_bytes = summary_path.stat().st_size
        reported = orjson.loads(summary_path.read_bytes()).get("PeakRSSBytes")
    sizes = place.state_sizes()
    per = {name: size / entries for name, size in sizes.items()}
    print(
        f"{place.storage:>5} {entries:>9} run: exit {code}, {seconds:7.1f} s, peak RSS "
        f"{peak / 1e6:7.1f} MB sampled (summary says "
        f"{'-' if reported is None else f'{reported / 1e6:.1f} MB'}); state: listing.json "
        f"{sizes['listing'] / 1e6:.1f} MB ({per['listing']:.0f} B/file), done/ "
        f"{sizes['done'] / 1e6:.1f} MB ({per['done']:.0f} B/file), summary.json "
        f"{sizes['summary'] / 1e6:.1f} MB ({per['summary']:.0f} B/file); --summary "
        f"{summary_bytes / 1e6:.1f} MB ({summary_bytes / entries:.0f} B/file)",
        flush=True,
    )


def stop_run(
    place: Place,
    entries: int,
    model_url: str,
    directory: Path,
    env: dict[str, str],
    after: float,
) -> None:
    directory.mkdir(parents=True)
    process, _ = _start(_job(place.manifest, place.output, model_url), directory, env)
    peak = _watch(process, until=time.monotonic() + after)
    if process.poll() is not None:
        print(f"{place.storage:>5} {entries:>9} stop: ended before SIGTERM", flush=True)
        return
    listing = place.listing_exists()
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=600)
    except subprocess.TimeoutExpired:
        process.kill()
        code = process.wait()
        print(f"{place.storage:>5} {entries:>9} stop: still alive 600 s after SIGTERM", flush=True)
    waited = time.monotonic() - sent
    print(
        f"{place.storage:>5} {entries:>9} stop: SIGTERM {after:g} s after start "
        f"({'after' if listing else 'during'} the listing), exit {code} "
        f"{waited:.2f} s later; peak RSS before it {peak / 1e6:.1f} MB",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", nargs="+", choices=("s3", "local"), default=["s3", "local"])
    parser.add_argument("--entries", type=int, nargs="+", default=[300_000, 1_000_000])
    parser.add_argument("--sigterm", action="store_true", help="also time a stop mid-listing")
    parser.add_argument("--sigterm-after", type=float, default=8.0, metavar="SECONDS")
    parser.add_argument("--no-full-run", action="store_true", help="only the stop")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bt-bench-manifest-") as scratch:
        root = Path(scratch)
        model = ModelServer(root / "model.log")
        model.start()
        s3_server = None
        s3 = None
        env = dict(os.environ)
        try:
            if "s3" in args.storage:
                s3_server = SeaweedFS(root / "seaweedfs")
                s3_server.start()
                env.update(s3_server.env())
                s3 = s3_server.sync_client()
                s3.create_bucket(Bucket=BUCKET)
            for storage in args.storage:
                for entries in args.entries:
                    if not args.no_full_run:
                        tag = f"{storage}-{entries}-run"
                        place = Place(storage, root, s3, entries, tag)
                        full_run(place, entries, model.url, root / "runs" / tag, env)
                    if args.sigterm:
                        tag = f"{storage}-{entries}-stop"
                        place = Place(storage, root, s3, entries, tag)
                        stop_run(
                            place, entries, model.url, root / "runs" / tag, env, args.sigterm_after
                        )
        finally:
            model.stop()
            if s3_server is not None:
                s3_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
