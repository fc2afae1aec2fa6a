"""The model client: ``GET /ping``, ``GET /execution-parameters``, ``POST /invocations``.

One ``ModelClient`` owns one aiohttp session; its connector keeps up to ``max_inflight``
connections alive and a semaphore of that size bounds the requests in flight, shared by
every file of the job (docs/design.md §1.7). Only the headers the job sets are sent (aiohttp's
``Accept``, ``Accept-Encoding`` and ``Content-Type`` are suppressed); the ``User-Agent`` is
``bt-agent/<version>``. ``InvocationsTimeoutInSeconds`` bounds each attempt as a whole;
``RETRYABLE_ERRORS`` lists what earns another. Every body read from the model is bounded:
an ``/invocations`` answer by ``max_response_bytes`` (``Agent.MaxResponseMB``; checked
against Content-Length before reading and counted as it arrives, so at most the cap is
read), ``/execution-parameters`` by ``EXECUTION_PARAMETERS_MAX_BYTES`` (a longer answer
counts as absent), and a ``/ping`` body is never read (its status is the answer). An answer
is held in one buffer, with no second whole copy; the reorder buffer caps how many wait.
With ``died`` (``ModelProcess.died``) every wait races the model command's exit, so a dead
model fails at once, not by timeout.

The runner's sequence (execution parameters are known only once the model answers)::

    async with ModelClient(url, ModelClientSettings.from_job(job), died=died) as probe:
        await probe.wait_ready(job.agent.model_startup_timeout_seconds)
        answer = await probe.execution_parameters()
    params, sources = resolve_execution_parameters(job, answer)
    log.info(format_execution_parameters(params, sources))
    job = params.apply(job)
    async with ModelClient(url, ModelClientSettings.from_job(job), died=died) as client:
        output = await client.invoke(body, what="s3://b/in/x.csv bytes 0-6291455")
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Protocol, TypeVar

import aiohttp
from aiohttp.payload import AsyncIterablePayload, Payload
from multidict import CIMultiDict

from agent import __version__, metrics
from agent.aio import race
from agent.errors import BtAgentError
from agent.model import wire
from agent.model.execparams import (
    ExecutionParametersError,
    ResolvedParams,
    Source,
    format_execution_parameters,
    parse_execution_parameters,
    resolve_execution_parameters,
)
from agent.model.policy import (
    RETRYABLE_ERRORS,
    UNREACHABLE_ERRORS,
    InvocationError,
    ModelClientSettings,
    ModelError,
    ModelExitedError,
    ModelNotReadyError,
    ReplicaUnreachable,
    ResponseTooLargeError,
    RetryableStatusError,
    StatusError,
    backoff_seconds,
    failure_reason,
    invocation_failure,
)
from agent.model.process import ModelExit
from agent.model.wire import (
    AttemptStream,
    BodySource,
    BufferPayload,
    RequestBody,
    SourceFailed,
    TooLarge,
    read_capped,
)

__all__ = [
    "RETRYABLE_ERRORS",
    "USER_AGENT",
    "RequestBody",
    "BodySource",
    "ExecutionParametersError",
    "InvocationError",
    "Invoker",
    "ModelClient",
    "ModelClientSettings",
    "ModelError",
    "ModelExitedError",
    "ModelNotReadyError",
    "ResolvedParams",
    "ResponseTooLargeError",
    "RetryableStatusError",
    "Source",
    "StatusError",
    "format_execution_parameters",
    "resolve_execution_parameters",
]

log = logging.getLogger("agent.invoke")

USER_AGENT = f"bt-agent/{__version__}"
# aiohttp adds these unless told not to; only what the job sets is sent (docs/design.md §1.7).
_SUPPRESSED_HEADERS = ("Accept", "Accept-Encoding", "Content-Type")

# /execution-parameters answers a few fields; a longer body is taken as absent, unread.
EXECUTION_PARAMETERS_MAX_BYTES = 64 << 10
_T = TypeVar("_T")


# ----------------------------------------------------------------------------- the client


class Invoker(Protocol):
    """What the pipeline sends requests through: a ``ModelClient``, or the replicas'
    dispatcher (``agent.model.replicas.ReplicaSet``)."""

    async def invoke(self, body: RequestBody, *, what: str) -> bytearray: ...


class _Died(BtAgentError):
    def __init__(self, exit: ModelExit) -> None:
        super().__init__(exit.explain())
        self.exit = exit


class ModelClient:
    """The client of one model server: ``async with ModelClient(url, settings) as client``."""

    def __init__(
        self,
        url: str,
        settings: ModelClientSettings | None = None,
        *,
        died: asyncio.Future[ModelExit] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.settings = settings if settings is not None else ModelClientSettings()
        self.died = died
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(self.settings.max_inflight)
        # Built once, as the multidict aiohttp would build from a dict on every request;
        # the session has no default headers, which aiohttp would merge in each time.
        self._get_headers = CIMultiDict({"User-Agent": USER_AGENT})
        self._headers = self._get_headers.copy()
        if self.settings.content_type is not None:
            self._headers["Content-Type"] = self.settings.content_type
        if self.settings.accept is not None:
            self._headers["Accept"] = self.settings.accept

    async def __aenter__(self) -> ModelClient:
        connector = aiohttp.TCPConnector(
            limit=self.settings.max_inflight, keepalive_timeout=self.settings.keepalive_seconds
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            skip_auto_headers=_SUPPRESSED_HEADERS,
            timeout=aiohttp.ClientTimeout(total=None),  # each call sets its own deadline
            read_bufsize=self.settings.read_buffer_bytes,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use the ModelClient as `async with ModelClient(...) as client`")
        return self._session

    async def _race(
        self, work: Coroutine[Any, Any, _T], died: asyncio.Future[ModelExit] | None
    ) -> _T:
        """Await ``work`` unless the model command exits first (then raise ``_Died``)."""
        if died is None:
            return await work
        if died.done():
            work.close()
            raise _Died(died.result())
        task = await race(work, died)
        if task.cancelled() and died.done():
            raise _Died(died.result())
        if died.done() and not task.cancelled() and task.exception() is not None:
            raise _Died(died.result()) from task.exception()  # the error came from the exit
        return task.result()

    async def _get(
        self, path: str, timeout_seconds: float, *, body_cap: int = 0
    ) -> tuple[int, bytearray]:
        """``GET path``: the status and, for a 200, the body, read only when ``body_cap`` > 0
        and up to it (``TooLarge`` above it). An unread body is never waited for: leaving
        the response closes the connection when the body has not fully arrived."""
        async with asyncio.timeout(timeout_seconds):
            async with self._open().get(
                self.url + path, headers=self._get_headers, allow_redirects=False
            ) as response:
                if response.status != 200 or body_cap <= 0:
                    return response.status, bytearray()
                return response.status, await read_capped(response, body_cap)

    async def wait_ready(
        self, timeout_seconds: float, *, died: asyncio.Future[ModelExit] | None = None
    ) -> None:
        """Poll ``GET /ping`` until it answers 200; ``ModelNotReadyError`` at the deadline.

        ``died`` (default: the client's) fails the wait at once when the command exits.
        """
        died = died if died is not None else self.died
        s = self.settings
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + timeout_seconds
        last = "no answer yet"
        while True:  # each ping gets its full timeout; none starts after the deadline
            began = loop.time()
            try:
                status, _ = await self._race(self._get("/ping", s.ping_timeout_seconds), died)
            except _Died as death:
                how = death.exit.explain(f"before {self.url}/ping answered 200")
                message = f"the model command {how}"
                raise ModelNotReadyError(message, exit=death.exit) from None
            except (aiohttp.ClientError, TimeoutError) as error:
                last = failure_reason(error, s.ping_timeout_seconds)
            else:
                if status == 200:
                    log.info("the model at %s is ready after %.1f s", self.url, began - start)
                    return
                last = f"status {status}"
            now = loop.time()
            next_ping = max(began + s.ping_interval_seconds, now)
            if next_ping > deadline:
                raise ModelNotReadyError(
                    f"the model at {self.url} is not ready: GET /ping did not answer 200 "
                    f"within {timeout_seconds:g} s (waited {now - start:.1f} s; last answer: "
                    f"{last}); check Agent.ModelUrl and the server's log, or raise "
                    "Agent.ModelStartupTimeoutSeconds"
                )
            try:
                await self._race(asyncio.sleep(next_ping - now), died)
            except _Died:
                continue  # reported by the next ping's race

    async def execution_parameters(self) -> dict[str, object] | None:
        """The model's ``GET /execution-parameters`` object; ``None`` when it has none.

        A non-200 answer, an error, a body over ``EXECUTION_PARAMETERS_MAX_BYTES`` or one
        that is not a JSON object counts as absent.
        """
        timeout = self.settings.execution_parameters_timeout_seconds
        cap = EXECUTION_PARAMETERS_MAX_BYTES
        get = self._get("/execution-parameters", timeout, body_cap=cap)
        try:
            status, body = await self._race(get, self.died)
        except _Died as death:
            how = death.exit.explain("while asked for /execution-parameters")
            raise ModelNotReadyError(f"the model command {how}", exit=death.exit) from None
        except TooLarge as large:
            log.warning(
                "GET /execution-parameters answered more than %d KiB (%s); taken as absent",
                cap >> 10,
                large,
            )
            return None
        except (aiohttp.ClientError, TimeoutError) as error:
            reason = failure_reason(error, timeout)
            log.warning("GET /execution-parameters failed (%s); taken as absent", reason)
            return None
        if status != 200:
            log.info("GET /execution-parameters answered %d: the model sets none", status)
            return None
        answer = parse_execution_parameters(bytes(body))
        if answer is None:
            log.warning("GET /execution-parameters did not answer a JSON object; taken as absent")
        return answer

    async def invoke(self, body: RequestBody, *, what: str) -> bytearray:
        """POST ``body`` to ``/invocations``; the answer's body, or ``InvocationError``.

        An answer over ``max_response_bytes`` raises ``ResponseTooLargeError`` at once.

        ``body`` is bytes-like, or (for MaxPayloadInMB = 0) a callable opening the body's
        stream from its source, called again for each attempt. ``what`` names the batch in
        errors and logs: the file URI and byte range. An error of the body's source is
        raised as it is, without retries.
        """
        s = self.settings
        attempts = s.invocations_max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                async with self._slots:
                    if self.died is None:  # no model command to race: one frame less
                        return await self._attempt(body)
                    return await self._race(self._attempt(body), self.died)
            except _Died as death:
                raise ModelExitedError(what, death.exit, attempt) from death.__cause__
            except SourceFailed as failed:
                raise failed.error from None  # its own message and traceback tell it all
            except TooLarge as large:  # the same request would get the same answer
                raise ResponseTooLargeError(
                    what,
                    size=large.size,
                    cap_bytes=large.cap,
                    declared=large.declared,
                    attempts=attempt,
                ) from None
            except RETRYABLE_ERRORS as error:
                _count_failure(error)
                if s.fail_fast and isinstance(error, UNREACHABLE_ERRORS):
                    raise ReplicaUnreachable(what, error, attempt) from error
                if attempt == attempts:
                    timeout = s.invocations_timeout_seconds
                    raise invocation_failure(what, error, attempt, timeout) from error
                cause: Exception = error
            except (StatusError, aiohttp.ClientError) as error:
                _count_failure(error)
                timeout = s.invocations_timeout_seconds
                raise invocation_failure(what, error, attempt, timeout) from error
            metrics.current().retries.labels(component="model", reason=_reason(cause)).inc()
            delay = backoff_seconds(
                attempt, base_seconds=s.retry_base_seconds, cap_seconds=s.retry_cap_seconds
            )
            log.warning(
                "model request for %s failed (attempt %d/%d): %s; retrying in %.2f s",
                what,
                attempt,
                attempts,
                failure_reason(cause, s.invocations_timeout_seconds),
                delay,
            )
            try:
                await self._race(asyncio.sleep(delay), self.died)
            except _Died as death:
                raise ModelExitedError(what, death.exit, attempt) from cause
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _attempt(self, body: RequestBody) -> bytearray:
        s = self.settings
        streamed: AttemptStream | None = None
        data: Payload
        if callable(body):
            streamed = AttemptStream(body)
            data = AsyncIterablePayload(streamed.chunks)
        else:
            data = BufferPayload(body)
        counts = metrics.current()
        counts.in_flight.inc()
        started = time.monotonic()
        answered = False  # a status line arrived: the attempt's seconds count in the histogram
        try:
            async with asyncio.timeout(s.invocations_timeout_seconds):
                async with self._open().post(
                    self.url + "/invocations",
                    data=data,
                    headers=self._headers,
                    allow_redirects=False,
                ) as response:
                    counts.requests.labels(code=str(response.status)).inc()
                    answered = True
                    if 200 <= response.status < 300:
                        return await read_capped(response, s.max_response_bytes)
                    excerpt = await wire.excerpt(response, s.error_body_bytes)
                    retry = response.status >= 500 or response.status == 429
                    kind = RetryableStatusError if retry else StatusError
                    raise kind(response.status, response.reason, excerpt)
        except Exception as error:
            if streamed is not None and streamed.error is not None:
                raise SourceFailed(streamed.error) from error
            raise
        finally:
            counts.in_flight.dec()
            if answered:
                counts.request_seconds.observe(time.monotonic() - started)
            if streamed is not None:
                await streamed.close()


def _reason(error: BaseException) -> str:
    """A failed attempt's reason as a metric label: its HTTP status, ``timeout`` or
    ``connection`` (a bounded set: never a message)."""
    if isinstance(error, StatusError):
        return str(error.status)
    if isinstance(error, TimeoutError) and not isinstance(error, aiohttp.ClientError):
        return "timeout"
    return "connection"


def _count_failure(error: BaseException) -> None:
    """An attempt that got no HTTP answer (a status is counted as the answer arrives)."""
    if not isinstance(error, StatusError):
        metrics.current().request_failures.labels(reason=_reason(error)).inc()
