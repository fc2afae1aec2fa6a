"""Storage under hostile timing, against a real SeaweedFS: stops that meet an S3 call.

A stop (SIGTERM) that meets CreateMultipartUpload leaves no upload open, and neither does
a killed agent's upload of which no record was kept; a stop that meets a commit records
the file with its true size. The moments are made exact by ``HoldingProxy``: a real HTTP
proxy on 127.0.0.1 in front of SeaweedFS that holds the chosen S3 requests until the test
lets them go.
"""

from __future__ import annotations

import asyncio
import io
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from runjob import (
    STATE_DIRECTORY,
    assembled,
    get_objects,
    line,
    open_uploads,
    output_keys,
    put_objects,
    request_bodies,
    start_agent,
    transform_job,
)
from servers import HOST, ModelServer, SeaweedFS, wait_until

pytestmark = pytest.mark.integration

MIB = 1 << 20
# Not forwarded: what the hop itself decides (the body is forwarded whole, as read).
_REQUEST_HOP = frozenset({"host", "content-length", "transfer-encoding", "connection", "expect"})
_ANSWER_HOP = frozenset({"content-length", "transfer-encoding", "connection", "content-encoding"})


def _is_create(request: web.Request) -> bool:
    """CreateMultipartUpload: ``POST /bucket/key?uploads``."""
    return request.method == "POST" and "uploads" in request.query


def _is_complete(request: web.Request) -> bool:
    """CompleteMultipartUpload: ``POST /bucket/key?uploadId=…``."""
    return request.method == "POST" and "uploadId" in request.query


class HoldingProxy:
    """Forwards every request to ``target``; holds the first one ``hold`` picks.

    ``arrived`` is set when that request came in, and it is sent on once ``release`` is
    set. Runs its own event loop in a thread, so the test can wait on the agent meanwhile.
    """

    def __init__(self, target: str, hold: Callable[[web.Request], bool]) -> None:
        self.target = target
        self.hold = hold
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)

    def stop(self) -> None:
        self.release.set()
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=True)
        app = web.Application(client_max_size=64 * MIB)
        app.router.add_route("*", "/{tail:.*}", self._handle)  # answers Expect: 100-continue
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if not self.arrived.is_set() and self.hold(request):
            self.arrived.set()
            await asyncio.to_thread(self.release.wait, 120)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _REQUEST_HOP}
        assert self._session is not None
        async with self._session.request(
            request.method, self.target + request.path_qs, headers=headers, data=io.BytesIO(body)
        ) as answer:
            payload = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in _ANSWER_HOP}
            return web.Response(status=answer.status, body=payload, headers=kept)


@pytest.fixture
def holding_proxy(s3_server: SeaweedFS) -> Iterator[Callable[..., HoldingProxy]]:
    proxies: list[HoldingProxy] = []

    def start(hold: Callable[[web.Request], bool]) -> HoldingProxy:
        proxy = HoldingProxy(s3_server.endpoint_url, hold)
        proxies.append(proxy)
        proxy.start()
        return proxy

    try:
        yield start
    finally:
        for proxy in proxies:
            proxy.stop()


def big_csv(rows: int) -> bytes:
    """About 50 bytes a row: 400,000 rows make ~20 MiB, an output of three 8 MiB parts."""
    return b"".join(b"%08d,%s\n" % (n, b"v" * (n % 80)) for n in range(rows))


def echo_output(data: bytes, payload_mb: int) -> bytes:
    """What the echo model's output of a Line-split MultiRecord file must be."""
    records = [line(row + b"\n") for row in data.splitlines()]
    return assembled(request_bodies(records, "MultiRecord", payload_mb * MIB), "Line")


def state_records(client: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """Every completion record under ``<prefix>_bt-agent/`` (batches unpacked)."""
    found: list[dict[str, Any]] = []
    answer = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}{STATE_DIRECTORY}")
    for item in answer.get("Contents", []):
        if "/done/" not in item["Key"]:
            continue
        document = orjson.loads(client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
        found += document["Batch"] if "Batch" in document else [document]
    return found


# ----------------------------------------------------------------------------- defect 13c


def test_sigterm_during_the_commit_records_the_true_output_size(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    model: ModelServer,
    holding_proxy: Callable[..., HoldingProxy],
    tmp_path: Path,
) -> None:
    data = big_csv(400_000)
    expected = echo_output(data, 6)
    client = s3_server.sync_client()
    put_objects(client, bucket, {"in/big.csv": data})
    proxy = holding_proxy(_is_complete)
    job = transform_job(
        "stop-at-commit",
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out/",
        model_url=model.url,
        split_type="Line",
        assemble_with="Line",
        batch_strategy="MultiRecord",
        max_payload_mb=6,
        max_concurrent=2,
    )

    agent = start_agent(job, tmp_path, env={"AWS_ENDPOINT_URL_S3": proxy.url})
    try:
        assert wait_until(proxy.arrived.is_set, 60.0), agent.log()  # the commit is under way
        agent.signal(signal.SIGTERM)
        assert wait_until(lambda: "SIGTERM received" in agent.log(), 30.0), agent.log()
        proxy.release.set()  # the commit goes on: the stop met it, so it is finished
        run = agent.wait(60.0)
    finally:
        agent.kill()

    assert run.returncode == 143, run.explain()
    (out,) = output_keys(client, bucket, "out/")
    stored = get_objects(client, bucket, [out])[out]
    assert stored == expected
    etag = client.head_object(Bucket=bucket, Key=out)["ETag"]
    entry = run.file(f"s3://{bucket}/in/big.csv")
    assert entry["Status"] == "Completed", run.explain()
    assert (entry["OutputBytes"], entry.get("OutputETag")) == (len(expected), etag), entry
    assert entry["Records"] == 400_000 and entry["Requests"] >= 4, entry
    (record,) = state_records(client, bucket, "out/")
    assert record["Status"] == "Completed", record
    assert (record["OutputBytes"], record["OutputETag"]) == (len(expected), etag), record
    assert (record["Records"], record["Requests"]) == (entry["Records"], entry["Requests"])
    assert open_uploads(client, bucket) == []
