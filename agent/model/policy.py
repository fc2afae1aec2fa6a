"""The model client's policy: its settings, its errors, what is retried and how long it waits.

Every final error is a sentence naming the batch (file URI and byte range), the status or
the exception, and the start of the model's answer. No I/O here; ``agent.model.client``
re-exports the public names.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import aiohttp

# The delay between two attempts: full jitter (the default ``floor`` 0) with the client's
# ``retry_base_seconds`` and ``retry_cap_seconds``; re-exported for ``agent.model.client``.
from agent.backoff import backoff_seconds as backoff_seconds
from agent.errors import BtAgentError
from agent.job import JobSettings
from agent.model.process import ModelExit


class ModelError(BtAgentError):
    """The model server could not do what the job needs; the message says what happened."""


class ModelNotReadyError(ModelError):
    """``/ping`` did not answer 200 in time, or the model command exited first."""

    def __init__(self, message: str, *, exit: ModelExit | None = None) -> None:
        super().__init__(message)
        self.exit = exit


class InvocationError(ModelError):
    """One batch failed for good: the message names it, the status or error, the body."""

    def __init__(
        self,
        message: str,
        *,
        what: str,
        attempts: int,
        status: int | None = None,
        body_excerpt: str | None = None,
    ) -> None:
        super().__init__(message)
        self.what, self.attempts = what, attempts
        self.status, self.body_excerpt = status, body_excerpt


class ModelExitedError(InvocationError):
    """The model command exited while a batch was unfinished; ``exit`` says how."""

    def __init__(self, what: str, exit: ModelExit, attempts: int) -> None:
        how = exit.explain("while requests were in flight")
        super().__init__(f"{what}: the model command {how}", what=what, attempts=attempts)
        self.exit = exit


class ReplicaUnreachable(InvocationError):
    """One of several replicas refused or dropped the connection: the request goes to
    another replica (``agent.model.replicas``), not counted against the retries."""

    def __init__(self, what: str, error: BaseException, attempts: int) -> None:
        super().__init__(f"{what}: {failure_reason(error, 0)}", what=what, attempts=attempts)


class ResponseTooLargeError(InvocationError):
    """An answer was over ``Agent.MaxResponseMB``: failed at once, since a retry would get
    the same answer again. Reading stopped at the cap (or before any byte of the body when
    its Content-Length said so), so it cost at most the cap in memory."""

    def __init__(self, what: str, *, size: int, cap_bytes: int, declared: bool, attempts: int):
        if declared:
            seen = f"its Content-Length is {size} bytes"
        else:
            seen = f"at least {size} bytes arrived, and reading stopped there"
        message = (
            f"{what}: the model's answer is larger than the {_mib(cap_bytes)} cap on one answer "
            f"({cap_bytes} bytes; {seen}); not retried, as the same request would get the same "
            "answer. Raise Agent.MaxResponseMB (each request in flight may hold that much "
            "memory), or send smaller batches with a lower MaxPayloadInMB"
        )
        super().__init__(message, what=what, attempts=attempts)
        self.size, self.cap_bytes, self.declared = size, cap_bytes, declared


def _mib(size: int) -> str:
    return f"{size / (1 << 20):g} MiB"


class StatusError(BtAgentError):
    """One attempt got a non-2xx answer (an ``InvocationError`` chains it)."""

    def __init__(self, status: int, reason: str | None, body_excerpt: str) -> None:
        self.status, self.reason, self.body_excerpt = status, reason or "", body_excerpt
        line = f"{self.status} {self.reason}".rstrip()
        super().__init__(f"status {line}, response body {self.body_excerpt!r}")


class RetryableStatusError(StatusError):
    """A 5xx or 429 answer: the model may do better a moment later."""


# Connection failures that say the server is not there (any more): with several replicas
# the request goes elsewhere (``ModelClientSettings.fail_fast``).
UNREACHABLE_ERRORS: tuple[type[Exception], ...] = (
    aiohttp.ClientConnectorError,
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientOSError,
)

# What is worth another attempt: the connection failed or broke, the answer was not HTTP
# (ClientResponseError: we never raise for a status ourselves) or did not come in time,
# or the status says "later". Other 4xx answers will not change.
RETRYABLE_ERRORS: tuple[type[Exception], ...] = (
    aiohttp.ClientConnectionError,
    aiohttp.ClientPayloadError,
    aiohttp.ClientResponseError,
    TimeoutError,
    RetryableStatusError,
)


def failure_reason(error: BaseException, timeout_seconds: float) -> str:
    """One line for what went wrong with one request."""
    if isinstance(error, StatusError):
        return str(error)
    if isinstance(error, TimeoutError) and not isinstance(error, aiohttp.ClientError):
        return f"no complete answer within {timeout_seconds:g} s"
    text = " ".join(str(error).split())  # aiohttp's parser errors span several lines
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def invocation_failure(
    what: str, error: BaseException, attempts: int, timeout_seconds: float
) -> InvocationError:
    """The final error for a batch, after ``attempts`` attempts ended with ``error``."""
    tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
    reason = failure_reason(error, timeout_seconds)
    if isinstance(error, StatusError) and not isinstance(error, RetryableStatusError):
        message = f"{what}: the model refused the request with {reason}"
        message += " (not retried: only 429 and 5xx answers are)"
    else:
        message = f"{what}: the model request failed after {tries}: {reason}"
    if isinstance(error, TimeoutError) and not isinstance(error, aiohttp.ClientError):
        message += "; raise ModelClientConfig.InvocationsTimeoutInSeconds if the model is slow"
    status = error.status if isinstance(error, StatusError) else None
    excerpt = error.body_excerpt if isinstance(error, StatusError) else None
    return InvocationError(
        message, what=what, attempts=attempts, status=status, body_excerpt=excerpt
    )


@dataclass(frozen=True, slots=True)
class ModelClientSettings:
    """How the client talks to the model; units in the names."""

    max_inflight: int = 1  # requests in flight (and kept-alive connections) at once
    content_type: str | None = None  # Content-Type of /invocations; None: no such header
    accept: str | None = None  # Accept of /invocations; None: no such header
    invocations_timeout_seconds: float = 600.0  # per attempt: send the body, read the answer
    invocations_max_retries: int = 3  # attempts after the first one
    retry_base_seconds: float = 0.2  # backoff ceiling before the first retry; doubles each time
    retry_cap_seconds: float = 5.0  # backoff ceiling never exceeds this
    ping_interval_seconds: float = 1.0  # between the starts of two /ping requests
    ping_timeout_seconds: float = 2.0  # per /ping
    execution_parameters_timeout_seconds: float = 10.0
    keepalive_seconds: float = 15.0  # an idle connection is closed after this
    error_body_bytes: int = 1024  # how much of a failed answer goes into the message
    read_buffer_bytes: int = 1 << 20  # aiohttp's read buffer per response
    max_response_bytes: int = 64 << 20  # cap on one /invocations answer's body
    # One of several replicas: a refused or dropped connection raises ReplicaUnreachable
    # at once (another replica takes the request) instead of being retried here.
    fail_fast: bool = False

    @classmethod
    def from_job(cls, settings: JobSettings, **overrides: Any) -> ModelClientSettings:
        """The job's headers, limits and timeouts; ``max_inflight`` 1 while unresolved."""
        config = settings.model_client
        values: dict[str, Any] = {
            "max_inflight": settings.max_concurrent_transforms or 1,
            "content_type": settings.input.content_type,
            "accept": settings.output.accept,
            "invocations_timeout_seconds": float(config.invocations_timeout_seconds),
            "invocations_max_retries": config.invocations_max_retries,
            "max_response_bytes": settings.max_response_bytes,
        }
        return replace(cls(**values), **overrides)
