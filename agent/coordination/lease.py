"""Lease coordination (docs/design.md §4.4): files claimed by lease objects and conditional writes.

A lease is ``<state>/leases/<file-id>.json``. The rules, and why they are safe:

* **Claim** with ``If-None-Match: *``: of many claimers, exactly one write succeeds.
* **Renew** every ``renew_seconds`` with ``If-Match`` on the ETag of the last write. Each
  body differs (a renewal counter), so each renewal changes the ETag.
* **Take over** only after seeing the *same* ETag for a whole ``ttl_seconds`` on the
  taker's own monotonic clock, then overwrite with ``If-Match`` on that ETag.
* **Stop** when no renewal succeeded for ``ttl_seconds - margin_seconds``, counted from
  the moment the last successful write was *sent*. A write sent at ``t`` is seen by a
  taker at ``t`` or later, and the taker then waits a whole TTL; so the holder has stopped
  ``margin_seconds`` before any takeover can happen, with the margin absorbing clock-rate
  differences and the time a commit takes. A paused holder (SIGSTOP) finds its deadline
  gone when it wakes, and its late commit is refused anyway by the commit's condition.

:class:`LeaseBook` claims and takes over; :class:`HeldLease` is what the holder keeps: a
background renewal, a ``lost`` event the pipeline races against, and ``check()`` for the
moment before a commit. :func:`check_conditional_writes` is the start-up probe.

The module is a little over 400 lines: the rules above are kept beside the one class that
enforces each, so the safety argument reads in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import orjson

from agent.coordination.state import STATE_FORMAT, StateLayout, dumps, now_iso
from agent.errors import BtAgentError, UsageError
from agent.storage import PreconditionFailed, StorageError, Store

log = logging.getLogger("agent.lease")


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    """Lease timing. Defaults suit S3 (a renewal every 10 s; a dead instance's file is
    taken over about a minute after its last renewal); tests use a TTL of 2-3 s."""

    ttl_seconds: float = 60.0  # a lease whose ETag stays unchanged this long may be taken over
    renew_seconds: float = 10.0  # the holder renews this often
    margin_seconds: float = 15.0  # the holder stops a file this long before its TTL could end
    poll_seconds: float = 5.0  # how often a waiting instance looks again at others' leases
    request_timeout_seconds: float = 5.0  # one renewal attempt, retries included

    def __post_init__(self) -> None:
        if min(self.margin_seconds, self.poll_seconds, self.request_timeout_seconds) <= 0:
            raise ValueError("margin_seconds, poll_seconds and request_timeout_seconds must be > 0")
        if not 0 < self.renew_seconds < self.ttl_seconds - self.margin_seconds:
            raise ValueError(
                "renew_seconds must be positive and below ttl_seconds - margin_seconds, "
                "so a holder renews at least once before it must stop"
            )

    @classmethod
    def for_ttl(cls, ttl_seconds: float) -> LeaseSettings:
        """Timings scaled from one TTL (``Agent.LeaseTTLSeconds``) in the defaults' ratios:
        renew every TTL/6, stop TTL/4 early, poll every TTL/12, a renewal attempt at most
        TTL/6 (and never over 5 s). ``for_ttl(60)`` is the default."""
        return cls(
            ttl_seconds=ttl_seconds,
            renew_seconds=ttl_seconds / 6,
            margin_seconds=ttl_seconds / 4,
            poll_seconds=ttl_seconds / 12,
            request_timeout_seconds=min(5.0, ttl_seconds / 6),
        )


class ClaimLost(BtAgentError):
    """This instance no longer owns a file: another one took it over or committed it first.

    Not a failure of the file: the runner stops working on it and writes no record.
    """


class LeaseLost(ClaimLost):
    """This instance no longer holds the file's lease; its work on the file must stop."""


class ConditionalWritesUnsupported(UsageError):
    """The store does not refuse a second ``If-None-Match: *`` write; Lease mode is unsafe."""


@dataclass(frozen=True, slots=True)
class Holder:
    """This process as a lease holder: a unique token, and a label for people."""

    token: str
    label: str

    @classmethod
    def new(cls, label: str) -> Holder:
        return cls(secrets.token_hex(8), label)


def _body(input_uri: str, holder: Holder, claim: str, renewal: int, ttl: float) -> bytes:
    return dumps(
        {
            "Format": STATE_FORMAT,
            "Input": input_uri,
            "Holder": holder.token,
            "Instance": holder.label,
            "Claim": claim,
            "Renewal": renewal,
            "RenewedAt": now_iso(),
            "TtlSeconds": ttl,
        }
    )


def _parse(data: bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return document if isinstance(document, dict) else {}


class HeldLease:
    """A lease this instance holds; ``async with`` it to keep it renewed in the background.

    ``lost`` is set (and stays set) when the lease is taken over or could not be renewed
    in time; ``check()`` raises ``LeaseLost`` from then on, and also once the deadline has
    passed even if the event loop has not yet run the watchdog (after a SIGSTOP, say).
    """

    def __init__(
        self,
        store: Store,
        key: str,
        input_uri: str,
        holder: Holder,
        settings: LeaseSettings,
        *,
        etag: str,
        claim: str,
        sent_at: float,
        previous: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock  # the monotonic clock ``sent_at`` was read on (tests inject one)
        self.store = store
        self.key = key
        self.input_uri = input_uri
        self.holder = holder
        self.settings = settings
        self.etag = etag
        self.claim = claim
        self.previous = previous  # the label of the holder this lease was taken from
        self.lost = asyncio.Event()
        self.reason: str | None = None
        self._renewal = 0
        self._sent = {0: sent_at}  # renewal number -> when its write was sent
        self.deadline = sent_at + settings.ttl_seconds - settings.margin_seconds
        self._tasks: list[asyncio.Task[None]] = []

    def remaining(self) -> float:
        return self.deadline - self.clock()

    def check(self) -> None:
        """Raise ``LeaseLost`` unless the lease is certainly still ours (call before a commit)."""
        if not self.lost.is_set() and self.remaining() <= 0:
            self.lose(f"not renewed for {self._overdue()}")
        if self.lost.is_set():
            raise LeaseLost(f"{self.input_uri}: the lease was lost ({self.reason})")

    def _overdue(self) -> str:
        return f"{self.settings.ttl_seconds - self.settings.margin_seconds:g} s"

    def lose(self, reason: str) -> None:
        """Mark the lease lost (final); the file's work must stop."""
        if not self.lost.is_set():
            self.reason = reason
            self.lost.set()
            log.warning("%s: lease lost (%s); stopping this file", self.input_uri, reason)

    async def _renew_once(self) -> None:
        if self.remaining() <= 0:
            self.lose(f"not renewed for {self._overdue()}")
            return
        self._renewal += 1
        number = self._renewal
        self._sent[number] = self.clock()
        body = _body(self.input_uri, self.holder, self.claim, number, self.settings.ttl_seconds)
        try:
            async with asyncio.timeout(self.settings.request_timeout_seconds):
                etag = await self.store.put_bytes(self.key, body, if_match=self.etag)
        except PreconditionFailed:
            await self._after_refusal()
            return
        except (StorageError, TimeoutError) as error:
            # A timeout has no text of its own: say what it was.
            why = str(error) or (
                f"no answer within {self.settings.request_timeout_seconds:g} s"
                if isinstance(error, TimeoutError)
                else type(error).__name__
            )
            log.warning("%s: renewing the lease failed (%s); retrying", self.input_uri, why)
            return
        self._renewed(etag, number)

    def _renewed(self, etag: str, number: int) -> None:
        if self.lost.is_set():
            return  # lost is final: the file was stopped
        self.etag = etag
        sent = self._sent[number]
        self.deadline = max(
            self.deadline, sent + self.settings.ttl_seconds - self.settings.margin_seconds
        )
        self._sent = {k: v for k, v in self._sent.items() if k >= number}

    async def _after_refusal(self) -> None:
        """A renewal was refused: another holder, or an earlier attempt of ours that landed."""
        try:
            found = await self._read()
        except (StorageError, TimeoutError):
            return  # try again at the next renewal
        if found is None:
            self.lose("its lease object was deleted")
            return
        current, etag = found
        number = current.get("Renewal")
        if self._names_us(current) and isinstance(number, int) and number in self._sent:
            self._renewed(etag, number)
        else:
            self.lose(f"taken over by {current.get('Instance', 'another instance')}")

    async def _renew_loop(self) -> None:
        while not self.lost.is_set():
            await asyncio.sleep(self.settings.renew_seconds)
            await self._renew_once()

    async def _watchdog(self) -> None:
        while not self.lost.is_set():
            delay = self.remaining()
            if delay <= 0:
                self.lose(f"not renewed for {self._overdue()}")
                return
            await asyncio.sleep(delay)

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._renew_loop()), loop.create_task(self._watchdog())]
        return self

    async def stop(self) -> None:
        """Stop renewing (the lease then expires unless released)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def release(self, *, settled: bool = False) -> None:
        """Stop renewing and delete the lease, unless it was lost (then it may be another's).

        ``settled``: the file's output was committed and its completion record written, so
        nobody needs to take the lease over. Then a lease that merely ran out (renewals came
        late) is still deleted, once a read shows it names this holder and claim: it is not
        left behind for the others to wait out. A lease taken over is never touched.
        """
        await self.stop()
        try:
            if self.lost.is_set() or self.remaining() <= 0:
                if not settled or not await self._still_ours():
                    return
            await self.store.delete(self.key)
        except (StorageError, TimeoutError) as error:
            log.warning("%s: could not release the lease (%s); it expires", self.input_uri, error)

    async def _still_ours(self) -> bool:
        """Whether the lease object still names this holder and claim."""
        found = await self._read()
        return found is not None and self._names_us(found[0])

    async def _read(self) -> tuple[dict[str, Any], str] | None:
        """The lease object as stored now and its ETag; ``None`` when it is gone."""
        async with asyncio.timeout(self.settings.request_timeout_seconds):
            found = await self.store.get_bytes(self.key)
        return None if found is None else (_parse(found[0]), found[1])

    def _names_us(self, document: dict[str, Any]) -> bool:
        """Whether a lease document names this holder and this claim."""
        return document.get("Holder") == self.holder.token and document.get("Claim") == self.claim

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.shield(self.release())


class LeaseBook:
    """Claims and takes over leases, remembering how long each foreign ETag stayed put."""

    def __init__(
        self,
        store: Store,
        layout: StateLayout,
        holder: Holder,
        settings: LeaseSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock  # a monotonic clock in seconds; its leases share it (tests inject one)
        self.store = store
        self.layout = layout
        self.holder = holder
        self.settings = settings
        self._observed: dict[str, tuple[str, float]] = {}  # file id -> (ETag, first seen)

    def takeover_due(self, fid: str) -> float | None:
        """When (on ``clock``) a takeover of ``fid`` may first be tried, if it is being watched."""
        seen = self._observed.get(fid)
        return None if seen is None else seen[1] + self.settings.ttl_seconds

    async def try_acquire(self, fid: str, input_uri: str) -> HeldLease | None:
        """Claim ``fid``'s lease, or take it over if its ETag stood still a whole TTL.

        ``None``: someone else holds it (this call may start or continue watching it).
        """
        key = self.layout.lease(fid).key
        found = await self.store.get_bytes(key)
        now = self.clock()
        if found is None:
            self._observed.pop(fid, None)
            return await self._write(key, input_uri, previous=None, if_match=None)
        etag = found[1]
        seen = self._observed.get(fid)
        if seen is None or seen[0] != etag:
            self._observed[fid] = (etag, now)
            return None
        if now - seen[1] < self.settings.ttl_seconds:
            return None
        previous = str(_parse(found[0]).get("Instance", "an unknown instance"))
        del self._observed[fid]
        lease = await self._write(key, input_uri, previous=previous, if_match=etag)
        if lease is not None:
            log.warning(
                "%s: took the lease over from %s (unchanged for %.1f s)",
                input_uri,
                previous,
                now - seen[1],
            )
        return lease

    async def _write(
        self, key: str, input_uri: str, *, previous: str | None, if_match: str | None
    ) -> HeldLease | None:
        claim = secrets.token_hex(6)
        body = _body(input_uri, self.holder, claim, 0, self.settings.ttl_seconds)
        sent = self.clock()
        try:
            etag = await self.store.put_bytes(
                key, body, if_none_match=if_match is None, if_match=if_match
            )
        except PreconditionFailed:
            # Lost the race, unless an earlier attempt of this very request landed.
            found = await self.store.get_bytes(key)
            if found is None or _parse(found[0]).get("Claim") != claim:
                return None
            etag = found[1]
        return HeldLease(
            self.store,
            key,
            input_uri,
            self.holder,
            self.settings,
            etag=etag,
            claim=claim,
            sent_at=sent,
            previous=previous,
            clock=self.clock,
        )


async def read_leases(store: Store, layout: StateLayout) -> list[dict[str, Any]]:
    """Every lease object's body (for ``bt-agent status``), unreadable ones left out."""
    found = []
    for info in await store.list_objects(layout.leases_prefix.key):
        loaded = await store.get_bytes(info.key)
        if loaded is not None and (body := _parse(loaded[0])):
            found.append(body)
    return found


async def check_conditional_writes(store: Store, layout: StateLayout) -> None:
    """Make sure the store refuses a second ``If-None-Match: *`` write (and a wrong If-Match).

    Raises ``ConditionalWritesUnsupported`` with what to do otherwise. Lease coordination
    is only safe on a store that enforces both conditions.
    """
    key = layout.probe(secrets.token_hex(8)).key
    where = store.uri(key)
    advice = (
        "Lease coordination needs S3 conditional writes; use Agent.Coordination Static, or "
        "a store that enforces If-None-Match and If-Match on PutObject"
    )
    try:
        await store.put_bytes(key, b"{}\n", if_none_match=True)
        for attempt, condition in (
            ("If-None-Match: *", {"if_none_match": True}),
            ("If-Match on a wrong ETag", {"if_match": '"0"'}),
        ):
            try:
                await store.put_bytes(key, b"[]\n", **condition)
            except PreconditionFailed:
                continue
            raise ConditionalWritesUnsupported(
                f"{where}: the store accepted a write with {attempt} that it had to refuse. "
                + advice
            )
    except StorageError as error:
        raise ConditionalWritesUnsupported(
            f"{where}: the conditional-write check failed ({error}). {advice}"
        ) from error
    finally:
        with contextlib.suppress(StorageError):
            await store.delete(key)
