"""The retried S3 call that the store and its uploads share, and what it retries.

:class:`BucketCalls` is one bucket as the code that sends requests sees it: the shared
aiobotocore client, the bucket's name, the settings, and :meth:`BucketCalls.call`, which
retries transient errors (connection errors, timeouts, 5xx, throttling) with backoff
(:mod:`agent.backoff`) for up to ``StorageSettings.retry_seconds`` without progress, on
top of botocore's own few quick retries, and turns every other error into a
:class:`~agent.storage.StorageError` whose message says what failed and what to check.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from botocore.exceptions import (
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from agent import metrics
from agent.backoff import backoff_seconds
from agent.storage.base import (
    ObjectNotFoundError,
    PreconditionFailed,
    StorageError,
    StorageSettings,
    exception_summary,
)

log = logging.getLogger("agent.storage")

# Errors after which the same request may well succeed: the network, the server's mood.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    HTTPClientError,  # connection reset/closed, read timeouts
    BotoConnectionError,  # connection refused (EndpointConnectionError), connect timeouts
    IncompleteReadError,  # the body ended before Content-Length
    aiohttp.ClientError,  # payload errors, server disconnects
    OSError,  # TimeoutError and ConnectionError included
)
TRANSIENT_CODES = frozenset(
    {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling"}
)
RETRY_BASE_SECONDS = 0.1  # the backoff ceiling before the first retry; doubles each time
RETRY_JITTER_FLOOR = 0.5  # a delay is at least this share of its ceiling


def error_status(error: ClientError) -> tuple[int, str, str]:
    """The HTTP status, the error code and the message of a refused request."""
    response: dict[str, Any] = error.response
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    details = response.get("Error", {})
    return status, str(details.get("Code", status)), str(details.get("Message", ""))


def is_transient(error: BaseException) -> bool:
    """True for errors worth another attempt of the same request."""
    if isinstance(error, ClientError):
        status, code, _ = error_status(error)
        return status >= 500 or status == 429 or code in TRANSIENT_CODES
    if type(error) is HTTPClientError:  # botocore's wrapper for whatever the HTTP client raised
        inner = getattr(error, "kwargs", {}).get("error")
        return inner is None or is_transient(inner)
    return isinstance(error, TRANSIENT_ERRORS)


def retry_reason(error: BaseException) -> str:
    """A retried error as a metric label, from a bounded set: a transient S3 error code,
    else the HTTP status, ``timeout`` or ``connection`` (never a server's free text)."""
    if isinstance(error, ClientError):
        status, code, _ = error_status(error)
        return code if code in TRANSIENT_CODES else str(status)
    if isinstance(error, TimeoutError) or "timeout" in type(error).__name__.lower():
        return "timeout"
    return "connection"


class Retries:
    """Sleeps between attempts, and gives up once no progress was made for ``retry_seconds``.

    Call :meth:`progress` whenever an attempt gets somewhere (bytes arrived), so a long
    read that stumbles now and then is never abandoned for having stumbled too often.
    """

    def __init__(self, settings: StorageSettings, what: str) -> None:
        self.settings = settings
        self.what = what
        self.attempt = 0
        self._since = time.monotonic()

    def progress(self) -> None:
        self.attempt = 0
        self._since = time.monotonic()

    async def wait(self, error: BaseException) -> None:
        """Sleep before the next attempt; raise ``StorageError`` (chaining ``error``) if late."""
        self.attempt += 1
        waited = time.monotonic() - self._since
        if waited >= self.settings.retry_seconds:
            raise StorageError(
                f"{self.what} failed after {self.attempt} attempts over {waited:.0f} s: "
                f"{exception_summary(error)}; check that the store is reachable, then run "
                "the job again"
            ) from error
        delay = backoff_seconds(
            self.attempt,
            base_seconds=RETRY_BASE_SECONDS,
            cap_seconds=self.settings.retry_backoff_max_seconds,
            floor=RETRY_JITTER_FLOOR,
        )
        delay = min(delay, self.settings.retry_seconds - waited)
        metrics.current().retries.labels(component="s3", reason=retry_reason(error)).inc()
        log.warning(
            "%s: %s; retrying in %.2f s (attempt %d; giving up after %.0f s without progress)",
            self.what,
            exception_summary(error),
            delay,
            self.attempt + 1,
            self.settings.retry_seconds,
        )
        await asyncio.sleep(delay)


class BucketCalls:
    """One bucket's requests: ``client`` (an open aiobotocore S3 client, shared by every
    bucket of the process), the bucket's name, the settings, and the retried call."""

    def __init__(self, client: Any, bucket: str, settings: StorageSettings) -> None:
        self.client = client
        self.bucket = bucket
        self.settings = settings

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def error(self, what: str, error: Exception) -> StorageError:
        """A sentence for a non-transient error of ``what`` (e.g. "listing s3://b/p")."""
        if isinstance(error, NoCredentialsError):
            return StorageError(
                f"{what}: no AWS credentials found; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an instance or task role"
            )
        if not isinstance(error, ClientError):
            return StorageError(f"{what}: {exception_summary(error)}")
        status, code, message = error_status(error)
        if status == 412 or code in ("PreconditionFailed", "ConditionalRequestConflict"):
            return PreconditionFailed(f"{what}: refused by its condition ({code})")
        if code == "NoSuchBucket":
            return StorageError(f"{what}: the bucket {self.bucket} does not exist")
        if code in ("NoSuchKey", "404"):
            return ObjectNotFoundError(f"{what}: no such object")
        if status == 403:
            return StorageError(
                f"{what}: access denied ({code}); check that the credentials in use may do this"
            )
        return StorageError(f"{what}: {code} (HTTP {status}) {message}".rstrip())

    async def call(self, what: str, method: Callable[..., Awaitable[Any]], **params: Any) -> Any:
        """``await method(**params)``, retried on transient errors; others become StorageError."""
        retries = Retries(self.settings, what)
        body = params.get("Body")
        while True:
            if isinstance(body, io.BytesIO):
                body.seek(0)  # botocore rewinds between its own attempts, not between calls
            try:
                return await method(**params)
            except Exception as error:
                if not is_transient(error):
                    raise self.error(what, error) from error
                await retries.wait(error)
