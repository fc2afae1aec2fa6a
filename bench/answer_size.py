"""Peak memory of the agent when the model's answers are huge: ``python -m bench.answer_size``.

Each case starts a misbehaving model server on 127.0.0.1 (``HostileModel``: a raw asyncio
HTTP server in a thread of this process, generating its bytes on the fly from one small
block, never holding an answer) and runs ``python -m agent --job F --summary S`` on a one-
file local input, as a user would. It prints, per case, the exit code and job status, the
agent's peak RSS (the summary's ``PeakRSSBytes``, else the last ``VmHWM`` read from
``/proc/<pid>/status`` while it ran), how many body bytes the server managed to send, and
the first failure reason. The cases:

* ``chunked``: ``/invocations`` streams a 2 GiB chunked answer.
* ``length``: ``/invocations`` sends a 2 GiB answer with its Content-Length.
* ``ping``: ``/ping`` answers 200 with an endless chunked body.
* ``ping503``: ``/ping`` answers 503 with an endless chunked body (the start must time out).
* ``params``: ``/execution-parameters`` answers 200 with an 8 GiB body (Content-Length).
* ``params-chunked``: the same, endless and chunked.
* ``chunked-x4``: four files at MaxConcurrentTransforms 4, each answered as in ``chunked``
  (memory is concurrency × cap, not a function of the answers' size).
* ``within-cap``: ``MaxResponseMB`` 1024 and a 1 GiB answer, which is written whole (the
  answer is held once, not joined into a second copy).

``--agent-root DIR`` runs the agent of another checkout (for a before/after comparison);
``--gib`` scales the answers of the first two cases. Nothing is asserted; time is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.proc import vm_hwm

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
GIB = 1 << 30
_BLOCK = b"0123456789abcdef" * (16 << 10)  # 256 KiB, reused for every body sent
ENDLESS = -1  # an answer size: never ends


# ----------------------------------------------------------------------------- the server


@dataclass
class Answer:
    """How one path answers: status, body size (``ENDLESS``: never ends) and framing."""

    status: int = 200
    size: int = 0
    chunked: bool = False
    echo: bool = False  # answer the request's own body (then size and chunked are ignored)
    prefix: bytes = b""  # sent first, counted in ``size``
    rate_bytes_per_second: float | None = None  # None: as fast as the reader takes it


class HostileModel:
    """A model server that answers each path as told, counting the body bytes it sent.

    ``answers`` maps a path (``/ping``, ``/execution-parameters``, ``/invocations``) to an
    ``Answer``; any other path answers 404. ``sent[path]`` is the body bytes written to
    the socket so far, ``requests[path]`` how many requests came. It runs its own event
    loop in a daemon thread: ``with HostileModel(...) as model: model.url``.
    """

    def __init__(self, answers: dict[str, Answer]) -> None:
        self.answers = answers
        self.sent: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> HostileModel:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                _, path, _ = lines[0].split(" ", 2)
                headers = {
                    name.strip().lower(): value.strip()
                    for name, _, value in (line.partition(":") for line in lines[1:] if line)
                }
                body = await _read_body(reader, headers)
                self.requests[path] += 1
                answer = self.answers.get(path, Answer(status=404))
                await self._answer(writer, path, answer, body)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(
        self, writer: asyncio.StreamWriter, path: str, answer: Answer, body: bytes
    ) -> None:
        size = len(body) if answer.echo else answer.size
        head = [f"HTTP/1.1 {answer.status} Hostile", "Content-Type: application/octet-stream"]
        chunked = answer.chunked and not answer.echo
        if chunked:
            head.append("Transfer-Encoding: chunked")
        else:
            head.append(f"Content-Length: {size if size != ENDLESS else 1 << 62}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        if answer.echo:
            writer.write(body)
            self.sent[path] += len(body)
            await writer.drain()
            return
        left = size
        began = time.monotonic()
        piece = answer.prefix or _BLOCK
        while left != 0:
            if left != ENDLESS:
                piece = piece[:left]
            frame = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
            writer.write(frame)
            await writer.drain()
            self.sent[path] += len(piece)
            if left != ENDLESS:
                left -= len(piece)
            piece = _BLOCK
            if answer.rate_bytes_per_second:
                ahead = self.sent[path] / answer.rate_bytes_per_second - (time.monotonic() - began)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        if chunked:
            writer.write(b"0\r\n\r\n")
            await writer.drain()


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await reader.readexactly(size + 2))
            if size == 0:
                return b"".join(part[:-2] for part in parts)
    return await reader.readexactly(int(headers.get("content-length", "0")))


# ----------------------------------------------------------------------------- a job


def job_document(
    name: str, input_dir: Path, output_dir: Path, model_url: str, **top: Any
) -> dict[str, Any]:
    """A job on a local input directory, with the model at ``model_url``."""
    agent = {"ModelUrl": model_url, "ModelStartupTimeoutSeconds": 10, **top.pop("agent", {})}
    return {
        "TransformJobName": name,
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": str(input_dir)}}
        },
        "TransformOutput": {"S3OutputPath": str(output_dir)},
        "ModelClientConfig": {"InvocationsTimeoutInSeconds": 120, "InvocationsMaxRetries": 1},
        "Agent": agent,
        **top,
    }


@dataclass
class Run:
    returncode: int
    status: str | None
    peak_rss_bytes: int
    seconds: float
    reason: str
    log: str


def run_agent(
    job: dict[str, Any], directory: Path, *, agent_root: Path = ROOT, timeout: float = 300
) -> Run:
    """``python -m agent --job F --summary S`` to its end, its peak RSS watched meanwhile."""
    path = directory / f"{job['TransformJobName']}.json"
    path.write_bytes(orjson.dumps(job))
    summary_path = path.with_suffix(".summary.json")
    log_path = path.with_suffix(".log")
    env = {**os.environ, "PYTHONPATH": str(agent_root), "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "agent", "--job", str(path), "--summary", str(summary_path)]
    began = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            argv, cwd=agent_root, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        peak = 0
        try:
            while process.poll() is None:
                peak = max(peak, vm_hwm(process.pid))
                if time.monotonic() - began > timeout:
                    process.kill()
                time.sleep(0.02)
        finally:
            process.wait()
    seconds = time.monotonic() - began
    summary = orjson.loads(summary_path.read_bytes()) if summary_path.exists() else None
    status = None if summary is None else summary.get("TransformJobStatus")
    if summary is not None and summary.get("PeakRSSBytes"):
        peak = max(peak, int(summary["PeakRSSBytes"]))
    reason = ""
    if summary is not None:
        reasons = [f.get("FailureReason") for f in summary.get("Files", [])]
        reason = next((r for r in reasons if r), summary.get("FailureReason") or "")
    text = log_path.read_text(errors="replace")
    return Run(process.returncode, status, peak, seconds, reason, text)


# ----------------------------------------------------------------------------- the cases


def _cases(gib: float) -> dict[str, tuple[dict[str, Answer], str]]:
    big = int(gib * GIB)
    ok = Answer(status=200, size=2, prefix=b"OK")
    echo = Answer(echo=True)
    none = Answer(status=404)
    return {
        "chunked": (
            {
                "/ping": ok,
                "/execution-parameters": none,
                "/invocations": Answer(size=big, chunked=True),
            },
            f"/invocations streams a {gib:g} GiB chunked answer",
        ),
        "length": (
            {"/ping": ok, "/execution-parameters": none, "/invocations": Answer(size=big)},
            f"/invocations sends a {gib:g} GiB answer with Content-Length",
        ),
        "ping": (
            {
                "/ping": Answer(size=ENDLESS, chunked=True),
                "/execution-parameters": none,
                "/invocations": echo,
            },
            "/ping answers 200 with an endless chunked body",
        ),
        "ping503": (
            {"/ping": Answer(status=503, size=ENDLESS, chunked=True), "/invocations": echo},
            "/ping answers 503 with an endless chunked body (startup timeout 5 s)",
        ),
        "params": (
            {"/ping": ok, "/execution-parameters": Answer(size=8 * GIB), "/invocations": echo},
            "/execution-parameters answers an 8 GiB body with Content-Length",
        ),
        "params-chunked": (
            {
                "/ping": ok,
                "/execution-parameters": Answer(size=ENDLESS, chunked=True, prefix=b"{"),
                "/invocations": echo,
            },
            "/execution-parameters answers an endless chunked body",
        ),
        "chunked-x4": (
            {
                "/ping": ok,
                "/execution-parameters": none,
                "/invocations": Answer(size=big, chunked=True),
            },
            f"4 files, MaxConcurrentTransforms 4, each answered by a {gib:g} GiB chunked answer",
        ),
        "within-cap": (
            {
                "/ping": ok,
                "/execution-parameters": none,
                "/invocations": Answer(size=GIB, chunked=True),
            },
            "MaxResponseMB 1024 and a 1 GiB chunked answer: written whole, held once",
        ),
    }  # fmt: skip


# What a case changes in the job: how many input files, and top-level or Agent fields.
_SHAPES: dict[str, tuple[int, dict[str, Any]]] = {
    "ping503": (1, {"agent": {"ModelStartupTimeoutSeconds": 5}}),
    "chunked-x4": (4, {"MaxConcurrentTransforms": 4}),
    "within-cap": (1, {"agent": {"MaxResponseMB": 1024}}),
}


def measure(
    case: str, answers: dict[str, Answer], agent_root: Path, directory: Path
) -> tuple[Run, HostileModel]:
    input_dir = directory / case / "in"
    input_dir.mkdir(parents=True)
    files, fields = _SHAPES.get(case, (1, {}))
    for number in range(files):
        (input_dir / f"x{number}.csv").write_bytes(b"1,2,3\n" * 10)
    with HostileModel(answers) as model:
        job = job_document(
            f"answer-size-{case}",
            input_dir,
            directory / case / "out",
            model.url,
            MaxPayloadInMB=6,
            **dict(fields),
        )
        run = run_agent(job, directory / case, agent_root=agent_root)
    return run, model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", help="which cases (default: all)")
    parser.add_argument("--gib", type=float, default=2.0, help="answer size of chunked/length")
    parser.add_argument("--agent-root", type=Path, default=ROOT, help="checkout to run")
    args = parser.parse_args(argv)
    cases = _cases(args.gib)
    chosen = args.cases or list(cases)
    print(f"agent: {args.agent_root}; MaxPayloadInMB 6, so the default answer cap is 64 MiB")
    with tempfile.TemporaryDirectory(prefix="bt-answer-size-") as tmp:
        for case in chosen:
            answers, what = cases[case]
            run, model = measure(case, answers, args.agent_root, Path(tmp))
            sent = ", ".join(f"{p} {n / MIB:.1f} MiB" for p, n in sorted(model.sent.items()))
            asked = ", ".join(f"{p} ×{n}" for p, n in sorted(model.requests.items()))
            print(f"\n[{case}] {what}")
            print(
                f"  exit {run.returncode}, status {run.status}, peak RSS "
                f"{run.peak_rss_bytes / MIB:.0f} MiB, {run.seconds:.1f} s"
            )
            print(f"  server sent (body bytes): {sent}; requests: {asked}")
            if run.reason:
                print(f"  failure: {run.reason}")
            for line in run.log.splitlines():
                if "execution-parameters" in line or "not ready" in line:
                    print(f"  log: {line[:300]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
