"""The ideal pipeline of ``bench.e2e``: the least work any batch transform agent must do.

    python -m bench.ideal --input s3://b/in/ --output s3://b/out/ --model http://127.0.0.1:8080 \\
        --split-type Line --batch-strategy MultiRecord --payload-mb 6 --concurrency 8 \\
        --content-type text/csv

It streams each input (S3, or local files for a plain path), cuts the bodies with the
agent's own splitter (cutting is not what is compared), keeps ``--concurrency`` requests in
flight across files (a slot is freed as soon as its answer arrives), and writes one
``<name>.out`` per input with the answers in input order: one PUT, or a multipart upload
once they pass ``--part-mib``. No retries, no read-ahead beyond the socket, no state, no
logging. Prints one JSON line: Seconds (after imports), Files, Requests, InputBytes,
OutputBytes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import warnings
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import orjson
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from agent.split import make_splitter

MIB = 1 << 20


def _place(uri: str) -> tuple[str | None, str]:
    """(bucket, key prefix) of an ``s3://`` URI, or (None, absolute path) of a local one."""
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[5:].partition("/")
        return bucket, prefix
    return None, os.path.abspath(uri.removeprefix("file://"))


async def _listing(s3: Any, bucket: str | None, prefix: str) -> list[tuple[str, int]]:
    if bucket is None:
        found = [os.path.join(d, n) for d, _, names in os.walk(prefix) for n in names]
        return sorted((path, os.path.getsize(path)) for path in found)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted([(o["Key"], o["Size"]) async for p in pages for o in p.get("Contents", ())])


async def run(a: argparse.Namespace) -> dict[str, float | int]:
    started = time.monotonic()
    totals = {"Files": 0, "Requests": 0, "InputBytes": 0, "OutputBytes": 0}
    slots, files = asyncio.Semaphore(a.concurrency), asyncio.Semaphore(2 * a.concurrency)
    (src_bucket, src), (dst_bucket, dst) = _place(a.input), _place(a.output)
    base = src if src_bucket is None and os.path.isdir(src) else src[: src.rfind("/") + 1]
    headers, url = {"Content-Type": a.content_type}, a.model.rstrip("/") + "/invocations"
    async with AsyncExitStack() as stack:
        connector = aiohttp.TCPConnector(limit=a.concurrency)
        skip = ("Accept", "Accept-Encoding", "Content-Type")
        http = await stack.enter_async_context(
            aiohttp.ClientSession(connector=connector, skip_auto_headers=skip)
        )
        s3: Any = None
        if src_bucket is not None or dst_bucket is not None:
            config = AioConfig(s3={"addressing_style": "path"}, max_pool_connections=64)
            s3 = await stack.enter_async_context(get_session().create_client("s3", config=config))

        async def invoke(data: bytes) -> bytes:
            try:
                async with http.post(url, data=data, headers=headers) as response:
                    response.raise_for_status()
                    return await response.read()
            finally:
                slots.release()

        async def chunks(key: str) -> AsyncIterator[bytes]:
            if src_bucket is None:
                with open(key, "rb", buffering=0) as file:
                    while chunk := file.read(a.chunk_mib * MIB):
                        yield chunk
                return
            response = await s3.get_object(Bucket=src_bucket, Key=key)
            async with response["Body"] as body:
                while chunk := await body.read(a.chunk_mib * MIB):
                    yield chunk

        async def write(out: str, order: asyncio.Queue[asyncio.Task[bytes] | None]) -> None:
            """The answers in input order: one PUT, or multipart once past a part's size."""
            pieces: list[bytes] = []
            parts: list[dict[str, Any]] = []
            size, where = 0, {"Bucket": dst_bucket, "Key": out}

            async def ship(data: bytes) -> None:
                if not parts:
                    where["UploadId"] = (await s3.create_multipart_upload(**where))["UploadId"]
                part = await s3.upload_part(**where, PartNumber=len(parts) + 1, Body=data)
                parts.append({"PartNumber": len(parts) + 1, "ETag": part["ETag"]})

            while (task := await order.get()) is not None:
                pieces.append(data := await task)
                size += len(data)
                totals["OutputBytes"] += len(data)
                if dst_bucket is not None and size >= a.part_mib * MIB:
                    await ship(b"".join(pieces))
                    pieces, size = [], 0
            body = b"".join(pieces)
            if dst_bucket is None:
                os.makedirs(os.path.dirname(out), exist_ok=True)
                with open(out, "wb") as file:
                    file.write(body)
            elif not parts:
                await s3.put_object(**where, Body=body)
            else:
                if body:
                    await ship(body)
                await s3.complete_multipart_upload(**where, MultipartUpload={"Parts": parts})

        async def bodies(key: str) -> AsyncIterator[bytes]:
            splitter = make_splitter(
                a.split_type, a.batch_strategy, a.payload_mb * MIB, a.max_records
            )
            async for chunk in chunks(key):
                for body in splitter.feed(chunk):
                    yield bytes(body.data)  # bytes already: no copy
            for body in splitter.finish():
                yield bytes(body.data)

        async def one(key: str, size: int) -> None:
            order: asyncio.Queue[asyncio.Task[bytes] | None] = asyncio.Queue()
            out = dst.rstrip("/") + "/" + key[len(base) :].lstrip("/") + ".out"
            writer = asyncio.create_task(write(out, order))
            async for body in bodies(key):
                await slots.acquire()
                order.put_nowait(asyncio.create_task(invoke(body)))
                totals["Requests"] += 1
            order.put_nowait(None)
            await writer
            totals["Files"] += 1
            totals["InputBytes"] += size
            files.release()

        async with asyncio.TaskGroup() as group:
            for key, size in await _listing(s3, src_bucket, src):
                await files.acquire()
                group.create_task(one(key, size))
    return {"Seconds": round(time.monotonic() - started, 3), **totals, "PeakRSSBytes": _peak()}


def _peak() -> int:
    """This process's peak RSS (``VmHWM``), as the agent reports its own."""
    with open("/proc/self/status", "rb") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(b"VmHWM"))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ideal", description=__doc__)
    parser.add_argument("--input", required=True, help="s3://bucket/prefix or a local path")
    parser.add_argument("--output", required=True, help="s3://bucket/prefix/ or a local dir/")
    parser.add_argument("--model", required=True, help="the model server's URL")
    parser.add_argument("--split-type", default="Line")
    parser.add_argument("--batch-strategy", default="MultiRecord")
    parser.add_argument("--payload-mb", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--content-type", default="text/csv")
    parser.add_argument("--max-records", type=int, default=0, help="records per body (0: no cap)")
    parser.add_argument("--chunk-mib", type=int, default=4, help="largest read from the input")
    parser.add_argument("--part-mib", type=int, default=8, help="multipart part size")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # aiohttp's notice about bytes bodies above 1 MiB
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - non-Linux
        runner = asyncio.Runner()
    with runner:
        sys.stdout.buffer.write(orjson.dumps(runner.run(run(args))) + b"\n")


if __name__ == "__main__":
    main()
