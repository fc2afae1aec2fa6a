"""State, leases and coordination without servers: an in-memory store and the local one."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson
import pytest

from agent.cli.status import progress_lines
from agent.coordination.base import Coordinator
from agent.coordination.commit import (
    META_INPUT_ETAG,
    META_SETTINGS_HASH,
    CommitRule,
    OutputHead,
    commit_rule,
    output_metadata,
)
from agent.coordination.factory import open_coordinator
from agent.coordination.identity import Identity
from agent.coordination.lease import (
    ConditionalWritesUnsupported,
    Holder,
    LeaseBook,
    LeaseLost,
    LeaseSettings,
    check_conditional_writes,
)
from agent.coordination.listing import Listing, open_listing
from agent.coordination.records import (
    FileRecord,
    RecordCache,
    SettingsMismatch,
    completed,
    write_record,
)
from agent.coordination.state import (
    COMPLETED,
    FAILED,
    StateError,
    StateLayout,
    loads,
    write_summary,
)
from agent.coordination.summary import build_summary
from agent.job import AgentConfig, DataUri, JobSettings, TransformInput, TransformOutput
from agent.results import FileResult
from agent.storage import InputFile, ObjectInfo, PreconditionFailed, Stores, open_stores
from agent.storage.base import StorageError
from agent.storage.inputs import file_id
from tests.support.clock import ManualClock

EPSILON = 1e-6  # seconds: "just before" and "just after" a boundary on a ManualClock
FAST = LeaseSettings(
    ttl_seconds=0.6, renew_seconds=0.1, margin_seconds=0.2, poll_seconds=0.05,
    request_timeout_seconds=0.2,
)  # fmt: skip


class MemoryStore:
    """Just enough of ``Store`` for state objects, with S3's conditional-write semantics."""

    def __init__(self, *, conditions: bool = True) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.conditions = conditions
        self.failing = False  # every put raises StorageError (a network outage)
        self.land_then_refuse = False  # the next put lands, yet reports 412 (a retried request)
        self.puts = 0

    def uri(self, key: str) -> str:
        return f"mem://{key}"

    async def get_bytes(self, key: str) -> tuple[bytes, str] | None:
        await asyncio.sleep(0)
        return self.objects.get(key)

    async def put_bytes(
        self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        await asyncio.sleep(0)
        self.puts += 1
        if self.failing:
            raise StorageError(f"writing {key}: connection refused")
        current = self.objects.get(key)
        if self.conditions and (
            (if_none_match and current is not None)
            or (if_match is not None and (current is None or current[1] != if_match))
        ):
            raise PreconditionFailed(f"writing {key}: refused by its condition")
        etag = f'"{hashlib.md5(data).hexdigest()}"'
        self.objects[key] = (bytes(data), etag)
        if self.land_then_refuse:
            self.land_then_refuse = False
            raise PreconditionFailed(f"writing {key}: refused by its condition")
        return etag

    async def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    async def list_objects(self, prefix: str, *, exclude: Sequence[str] = ()) -> list[ObjectInfo]:
        return [
            ObjectInfo(key, len(data), etag)
            for key, (data, etag) in sorted(self.objects.items())
            if key.startswith(prefix)
        ]


LAYOUT = StateLayout(DataUri("s3", "b", "out/_bt-agent/job/"))


def item(key: str, size: int | None = 10, etag: str = '"e1"') -> InputFile:
    info = None if size is None else ObjectInfo(f"in/{key}", size, etag)
    return InputFile(DataUri("s3", "b", f"in/{key}"), key, info)


def record(
    f: InputFile, status: str = COMPLETED, settings: str = "h1", run: str = "r1"
) -> FileRecord:
    return FileRecord(
        Input=str(f.uri),
        InputETag=None if f.info is None else f.info.etag,
        SettingsHash=settings,
        Status=status,
        RunId=run,
        Instance="host:1",
        Output=f"s3://b/out/{f.relative_key}.out",
        OutputETag='"o"' if status == COMPLETED else None,
        Records=3,
        Requests=1,
        InputBytes=10,
        OutputBytes=7,
        FailureReason=None if status == COMPLETED else f"{f.uri}: boom",
    )


# ---------------------------------------------------------------------- layout and formats


def test_layout_keys() -> None:
    fid = file_id("s3://b/in/x.csv")
    assert len(fid) == 40 and fid != file_id("s3://b/in/x.csv ")
    assert LAYOUT.listing.key == "out/_bt-agent/job/listing.json"
    assert LAYOUT.done(fid).key == f"out/_bt-agent/job/done/{fid}.json"
    assert LAYOUT.lease(fid).key == f"out/_bt-agent/job/leases/{fid}.json"
    assert LAYOUT.uploads_prefix(fid).key == f"out/_bt-agent/job/uploads/{fid}/"
    assert LAYOUT.upload(fid, "id/with/slashes").key.startswith(f"out/_bt-agent/job/uploads/{fid}/")
    local = StateLayout(DataUri("file", "", "/data/state/"))
    assert local.summary.key == "/data/state/summary.json"


def test_listing_round_trip_keeps_missing_entries() -> None:
    files = (
        item("a.csv"),
        item("gone.csv", None),
        InputFile(DataUri("file", "", "/d/x"), "x", None, 3),
    )
    listing = Listing("run1", "2025-01-01T00:00:00.000+00:00", files)
    again = Listing.from_json(listing.to_json("job"), '"etag"', LAYOUT.listing)
    assert again == Listing(listing.run_id, listing.created_at, files, '"etag"')
    assert again.total_bytes == 10


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "not written by this version"),
        (b'{"Format": 9}', "Format 9"),
    ],
)
def test_state_objects_of_another_format_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(StateError, match=message):
        loads(data, LAYOUT.listing)


def test_record_round_trip_and_finality() -> None:
    f = item("a.csv")
    done = record(f)
    assert FileRecord.from_json(done.to_json(), LAYOUT.done("x")) == done
    assert done.final_for(f, "h1", "another-run")  # completed: final in any run
    assert done.final_for(f, None, "r1")
    assert not done.final_for(f, "h2", "r1")  # other settings
    assert not done.final_for(item("a.csv", etag='"e2"'), "h1", "r1")  # input changed
    failed = record(f, FAILED)
    assert failed.final_for(f, "h1", "r1") and not failed.final_for(f, "h1", "r2")
    assert "SettingsHash" not in failed.summary_entry()


# ---------------------------------------------------------------------- resume


def test_completed_skips_same_input_and_settings_only() -> None:
    same, changed, failed, fresh = item("a"), item("b"), item("c"), item("d")
    records = {
        file_id(same.uri): record(same),
        file_id(changed.uri): record(item("b", etag='"old"')),
        file_id(failed.uri): record(failed, FAILED),
    }
    assert completed(records, [same, changed, failed, fresh], "h1") == {file_id(same.uri)}


def test_settings_mismatch_is_refused_unless_forced() -> None:
    a, b = item("a"), item("b")
    records = {file_id(a.uri): record(a, settings="old-hash"), file_id(b.uri): record(b)}
    with pytest.raises(SettingsMismatch, match="1 file.*--force"):
        completed(records, [a, b], "h1")
    assert completed(records, [a, b], "h1", force=True) == {file_id(b.uri)}
    # a changed input is redone, not a mismatch
    assert completed(records, [item("a", etag='"new"'), b], "h1") == {file_id(b.uri)}


async def test_open_listing_creates_once_and_concurrent_creators_agree() -> None:
    store = MemoryStore()
    calls: list[int] = []

    async def inputs() -> list[InputFile]:
        calls.append(1)
        await asyncio.sleep(0.01)
        return [item("a"), item("b")]

    results = await asyncio.gather(*(open_listing(store, LAYOUT, "job", inputs) for _ in range(3)))
    assert sorted(created for _, created in results) == [False, False, True]
    assert len({listing.run_id for listing, _ in results}) == 1
    assert all(listing.files == (item("a"), item("b")) for listing, _ in results)
    later, created = await open_listing(store, LAYOUT, "job", inputs)
    assert not created and later.run_id == results[0][0].run_id and len(calls) == 3


async def test_a_finished_run_is_followed_by_a_new_snapshot() -> None:
    store = MemoryStore()
    first, _ = await open_listing(store, LAYOUT, "job", _files([item("a")]))
    summary, final = build_summary("job", first, {}, None, stopped="stopped by SIGTERM")
    assert summary["TransformJobStatus"] == "Stopped" and not final
    assert await write_summary(store, LAYOUT, summary)
    second, created = await open_listing(store, LAYOUT, "job", _files([item("a", etag='"e2"')]))
    assert created and second.run_id != first.run_id
    assert second.files[0].info is not None and second.files[0].info.etag == '"e2"'
    empty, created = await open_listing(MemoryStore(), LAYOUT, "job", _files([]))
    assert empty.files == () and not created


def _files(files: list[InputFile]):  # type: ignore[no-untyped-def]
    async def inputs() -> list[InputFile]:
        return files

    return inputs


# ---------------------------------------------------------------------- summary


def test_summary_status_follows_the_records() -> None:
    a, b = item("a"), item("b")
    listing = Listing("r1", "t0", (a, b))
    ok = {file_id(a.uri): record(a), file_id(b.uri): record(b)}
    summary, final = build_summary("job", listing, ok, "h1", execution_parameters={"X": 1})
    assert final and summary["TransformJobStatus"] == "Completed"
    assert (summary["FilesCompleted"], summary["Records"], summary["OutputBytes"]) == (2, 6, 14)
    assert summary["ExecutionParameters"] == {"X": 1} and "FailureReason" not in summary
    bad = {**ok, file_id(b.uri): record(b, FAILED)}
    summary, final = build_summary("job", listing, bad, "h1")
    assert final and summary["TransformJobStatus"] == "Failed"
    assert summary["FailureReason"] == "1 of 2 files failed: s3://b/in/b: boom"
    summary, final = build_summary("job", listing, {file_id(a.uri): record(a)}, "h1")
    assert not final and summary["TransformJobStatus"] == "InProgress"
    assert summary["Files"][1] == {"Input": "s3://b/in/b", "Status": "InProgress"}


async def test_a_final_summary_is_written_once_per_run() -> None:
    store = MemoryStore()
    listing = Listing("r1", "t0", (item("a"),))
    stopped, _ = build_summary("job", listing, {}, None, stopped="SIGTERM")
    assert await write_summary(store, LAYOUT, stopped)
    done, _ = build_summary("job", listing, {file_id(item("a").uri): record(item("a"))}, None)
    assert await write_summary(store, LAYOUT, done)  # replaces the Stopped one
    assert not await write_summary(store, LAYOUT, done)  # but a final one stays
    assert orjson.loads(store.objects[LAYOUT.summary.key][0])["TransformJobStatus"] == "Completed"


async def test_record_cache_rereads_only_what_changed() -> None:
    store = MemoryStore()
    cache = RecordCache(store, LAYOUT)
    await write_record(store, LAYOUT, record(item("a")))
    await write_record(store, LAYOUT, record(item("b")))
    store.objects[LAYOUT.done("junk").key] = (b"nope", '"j"')
    assert set(await cache.refresh()) == {file_id(item("a").uri), file_id(item("b").uri)}
    gets = 0
    original = store.get_bytes

    async def counting(key: str) -> tuple[bytes, str] | None:
        nonlocal gets
        gets += 1
        return await original(key)

    store.get_bytes = counting  # type: ignore[method-assign]
    await write_record(store, LAYOUT, record(item("b"), FAILED))
    records = await cache.refresh()
    assert records[file_id(item("b").uri)].Status == FAILED and gets == 2  # b and the junk


# ---------------------------------------------------------------------- commits


def test_commit_rule() -> None:
    wanted = output_metadata('"in-1"', "hash", "job")
    assert wanted == {META_INPUT_ETAG: '"in-1"', META_SETTINGS_HASH: "hash", "bt-agent-job": "job"}
    assert commit_rule(None, wanted) == CommitRule(if_none_match=True)
    same = OutputHead('"o1"', 5, {**wanted, "bt-agent-job": "another-job"})
    assert commit_rule(same, wanted) is None
    stale = OutputHead('"o1"', 5, output_metadata('"in-0"', "hash", "job"))
    assert commit_rule(stale, wanted) == CommitRule(if_match='"o1"')
    assert commit_rule(OutputHead("5-123", 5, None), wanted) == CommitRule(if_match="5-123")
    assert CommitRule(if_none_match=True).kwargs == {"if_none_match": True, "if_match": None}
    assert str(CommitRule(if_match='"o1"')) == 'If-Match: "o1"'


# ---------------------------------------------------------------------- leases


def test_lease_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="renew_seconds"):
        LeaseSettings(ttl_seconds=3, renew_seconds=2.5, margin_seconds=1)
    with pytest.raises(ValueError, match="margin_seconds"):
        LeaseSettings(margin_seconds=0)


async def test_two_claimers_at_once_exactly_one_wins() -> None:
    store = MemoryStore()
    books = [LeaseBook(store, LAYOUT, Holder.new(f"i{n}"), FAST) for n in range(4)]
    leases = await asyncio.gather(*(book.try_acquire("f", "s3://b/in/f") for book in books))
    won = [lease for lease in leases if lease is not None]
    assert len(won) == 1
    await won[0].release()
    assert LAYOUT.lease("f").key not in store.objects


async def until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds: on the event loop's turns, asserting no duration."""
    async with asyncio.timeout(20 * FAST.ttl_seconds):  # only so that a bug cannot hang
        while not condition():
            await asyncio.sleep(FAST.poll_seconds / 5)


async def test_takeover_only_after_a_whole_ttl_of_an_unchanged_etag() -> None:
    store = MemoryStore()
    clock = ManualClock()  # both instances' clock; it moves only as the test says
    holder = LeaseBook(store, LAYOUT, Holder.new("holder"), FAST, clock)
    taker = LeaseBook(store, LAYOUT, Holder.new("taker"), FAST, clock)
    lease = await holder.try_acquire("f", "s3://b/in/f")
    assert lease is not None
    async with lease:  # renewing: the taker never sees the same ETag for a TTL
        started = clock()
        while clock() - started < 2 * FAST.ttl_seconds:
            etag = lease.etag
            assert await taker.try_acquire("f", "s3://b/in/f") is None
            clock.advance(FAST.renew_seconds)  # a renewal period passes...
            await until(lambda etag=etag: lease.etag != etag)  # ...and the holder renews
        assert not lease.lost.is_set()
        await lease.stop()  # the holder "dies": no more renewals, no release
        watched = clock()
        assert await taker.try_acquire("f", "s3://b/in/f") is None  # its last ETag, first seen
        clock.set(watched + FAST.ttl_seconds - EPSILON)
        assert await taker.try_acquire("f", "s3://b/in/f") is None  # not a whole TTL yet
        clock.set(watched + FAST.ttl_seconds + EPSILON)
        taken = await taker.try_acquire("f", "s3://b/in/f")
        assert taken is not None
        # a whole TTL after the holder's last write was sent: its deadline passed a margin ago
        assert lease.remaining() <= -FAST.margin_seconds
        assert clock() - watched >= FAST.ttl_seconds - FAST.renew_seconds
        assert taken.previous == "holder"
        with pytest.raises(LeaseLost, match="not renewed"):
            lease.check()  # its own clock stopped it a margin before the takeover
    await taken.release()


async def test_a_holder_that_cannot_renew_stops_before_its_ttl_ends() -> None:
    store = MemoryStore()
    clock = ManualClock()
    sent = clock()  # the claim's write, the last that succeeds, is sent now
    lease = await LeaseBook(store, LAYOUT, Holder.new("h"), FAST, clock).try_acquire(
        "f", "s3://b/in/f"
    )
    assert lease is not None
    stop_by = sent + FAST.ttl_seconds - FAST.margin_seconds
    async with lease:
        store.failing = True
        clock.set(stop_by - 0.01)  # just before: renewals keep failing, the lease still holds
        puts = store.puts
        await until(lambda: store.puts >= puts + 2)
        assert not lease.lost.is_set()
        lease.check()
        clock.set(stop_by)  # a margin before its TTL could end, the holder stops by itself
        await until(lease.lost.is_set)
        assert lease.reason is not None and lease.reason.startswith("not renewed"), lease.reason
        with pytest.raises(LeaseLost, match="not renewed"):
            lease.check()
    assert LAYOUT.lease("f").key in store.objects  # a lost lease is not deleted by its holder


async def test_a_taken_over_holder_learns_at_its_next_renewal() -> None:
    store = MemoryStore()
    lease = await LeaseBook(store, LAYOUT, Holder.new("h"), FAST).try_acquire("f", "s3://b/in/f")
    assert lease is not None
    async with lease:
        key = LAYOUT.lease("f").key
        await store.put_bytes(key, b'{"Instance": "intruder"}', if_match=lease.etag)
        await asyncio.wait_for(lease.lost.wait(), timeout=FAST.renew_seconds * 3)
        assert lease.reason == "taken over by intruder"


async def test_a_renewal_that_landed_despite_a_refusal_is_kept() -> None:
    store = MemoryStore()
    lease = await LeaseBook(store, LAYOUT, Holder.new("h"), FAST).try_acquire("f", "s3://b/in/f")
    assert lease is not None
    async with lease:
        first = lease.etag
        store.land_then_refuse = True
        await asyncio.sleep(FAST.ttl_seconds)
        assert not lease.lost.is_set() and lease.etag != first
        lease.check()


async def test_claim_run_cancels_the_work_when_the_lease_is_lost(tmp_path: Path) -> None:
    async with open_stores() as stores:
        coordinator = await _coordinator(stores, tmp_path, "Lease", files={"a": b"1\n"})
        await coordinator.begin("h1")
        claims = coordinator.files()
        claim = await anext(claims)
        cancelled = asyncio.Event()

        async def work() -> None:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        assert claim.lease is not None
        asyncio.get_running_loop().call_later(0.05, claim.lease.lose, "test")
        async with claim:
            with pytest.raises(LeaseLost, match="test"):
                await claim.run(work())
        assert cancelled.is_set()
        await claims.aclose()


async def test_conditional_write_probe() -> None:
    await check_conditional_writes(MemoryStore(), LAYOUT)  # type: ignore[arg-type]
    with pytest.raises(ConditionalWritesUnsupported, match="If-None-Match"):
        await check_conditional_writes(MemoryStore(conditions=False), LAYOUT)  # type: ignore[arg-type]
    broken = MemoryStore()
    broken.failing = True
    with pytest.raises(ConditionalWritesUnsupported, match="connection refused"):
        await check_conditional_writes(broken, LAYOUT)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- coordinator, local


async def _coordinator(
    stores: Stores,
    tmp: Path,
    mode: str,
    *,
    files: dict[str, bytes] | None = None,
    index: int = 0,
    count: int = 1,
    force: bool = False,
) -> Coordinator:
    (tmp / "in").mkdir(exist_ok=True)
    for name, data in (files or {}).items():
        (tmp / "in" / name).write_bytes(data)
    job = JobSettings(
        "job",
        TransformInput("S3Prefix", DataUri("file", "", f"{tmp}/in/")),
        TransformOutput(DataUri("file", "", f"{tmp}/out")),
        agent=AgentConfig(coordination=mode),  # type: ignore[arg-type]
    )
    identity = Identity(index, count, "test")
    return await open_coordinator(stores, job, identity, lease_settings=FAST, force=force)


async def _process(coordinator: Coordinator) -> list[str]:
    done = []
    async for claim in coordinator.files():
        async with claim:
            assert claim.output is not None and claim.item.info is not None
            result = FileResult(str(claim.item.uri), str(claim.output), claim.item.info.size)
            store = await coordinator.stores.get(claim.output)
            upload = store.open_upload(
                claim.output.key, metadata=claim.metadata, on_upload_id=claim.on_upload_id
            )
            async with upload:
                await upload.write(b"out:" + claim.item.relative_key.encode())
                result.output_etag = await claim.commit(upload)
            result.records = 1
            result.finish(COMPLETED)
            await claim.record(result)
            done.append(claim.item.relative_key)
    return done


def _version(path: Path) -> str:
    info = path.stat()
    return f"{info.st_size}-{info.st_mtime_ns}"


async def test_static_runs_resume_and_refuse_other_settings(tmp_path: Path) -> None:
    files = {"a": b"a" * 30, "b": b"b" * 20, "c": b"c" * 10}
    out = tmp_path / "out"
    async with open_stores() as stores:
        shares = []
        for index in range(2):
            coordinator = await _coordinator(
                stores, tmp_path, "Static", files=None if index else files, index=index, count=2
            )
            await coordinator.begin("h1")
            shares.append(await _process(coordinator))
            summary = await coordinator.finish()
        assert shares == [["a"], ["b", "c"]]
        assert summary is not None and summary["TransformJobStatus"] == "Completed"
        assert (out / "c.out").read_bytes() == b"out:c"
        assert not list((out / "_bt-agent" / "job").glob("uploads/*/*"))

        (tmp_path / "in" / "b").write_bytes(b"B" * 21)  # a changed input is redone on rerun
        coordinator = await _coordinator(stores, tmp_path, "Static")
        await coordinator.begin("h1")
        assert await _process(coordinator) == ["b"]
        summary = await coordinator.finish()
        assert summary is not None and summary["FilesCompleted"] == 3

        coordinator = await _coordinator(stores, tmp_path, "Static")
        with pytest.raises(SettingsMismatch):
            await coordinator.begin("h2")
        coordinator = await _coordinator(stores, tmp_path, "Static", force=True)
        await coordinator.begin("h2")
        rules = []
        async for claim in coordinator.files():
            async with claim:
                rules.append(claim.rule)
        # local outputs carry no metadata: an existing one is replaced on its exact version
        assert rules == [
            CommitRule(if_match=_version(out / n)) for n in ("a.out", "b.out", "c.out")
        ]


async def test_a_static_coordinator_ends_its_record_flusher_when_it_closes(tmp_path: Path) -> None:
    """The task ``begin`` starts (records written every second) is cancelled and awaited on
    close, and the records it had not written yet are written then."""
    async with open_stores() as stores:
        coordinator = await _coordinator(stores, tmp_path, "Static", files={"a": b"a\n"})
        others = asyncio.all_tasks()
        async with coordinator:
            await coordinator.begin("h1")
            assert len(asyncio.all_tasks() - others) == 1  # the flusher
            assert await _process(coordinator) == ["a"]
        assert asyncio.all_tasks() == others  # none left running, nor cancelled unawaited
        records = await RecordCache(coordinator.state, coordinator.layout).refresh()
    assert [record.Status for record in records.values()] == [COMPLETED]


def test_progress_lines_show_instances_and_leases() -> None:
    a, b, c = item("a", 100), item("b", 300), item("c", 600)
    listing = Listing("r2", "t0", (a, b, c))
    records = {
        file_id(a.uri): record(a, run="r1"),  # completed by an earlier run
        file_id(b.uri): record(b, FAILED, run="r2"),
    }
    lease = {"Input": str(c.uri), "Instance": "host-b:7", "Renewal": 4, "RenewedAt": "t9"}
    lines = progress_lines("job", listing, records, [lease])
    assert lines == [
        "job: InProgress (run r2, listed at t0)",
        "  files: 1 of 3 completed, 1 failed, 1 being processed under lease",
        "  bytes: 100 of 1000 input bytes completed (10.0%)",
        "  instances:",
        "    host-b:7: 0 completed, 0 failed, 0 bytes in this run",
        f"      working on {c.uri} (lease renewed 4 times, last at t9)",
        "    host:1: 0 completed, 1 failed, 10 bytes in this run",
        "  1 file(s) were completed by an earlier run and are skipped",
        "  first failure: s3://b/in/b: boom",
    ]


def test_progress_lines_count_failed_records() -> None:
    a, b = item("a", 100), item("b", 300)
    listing = Listing("r2", "t0", (a, b))
    isolated = dataclasses.replace(record(a, run="r2"), FailedRecords=3, ErrorsETag='"e"')
    records = {file_id(a.uri): isolated}
    lines = progress_lines("job", listing, records, [])
    shown = "  failed records: 3 in completed files (each file's <name>.errors.jsonl lists its own)"
    assert shown in lines
    assert "    host:1: 1 completed, 0 failed, 3 failed records, 10 bytes in this run" in lines


async def test_a_settled_file_releases_its_lease_even_after_it_ran_out() -> None:
    # The file was committed and recorded, but the release came after the holder's own
    # deadline (renewals ran late): the lease, still naming this holder, is deleted.
    store = MemoryStore()
    clock = ManualClock()
    lease = await LeaseBook(store, LAYOUT, Holder.new("h"), FAST, clock).try_acquire(
        "f", "s3://b/in/f"
    )
    assert lease is not None
    clock.advance(FAST.ttl_seconds)  # past its deadline, no renewal ran
    assert lease.remaining() <= 0
    await lease.release()  # unsettled: it may be about to be taken over, so it stays
    assert LAYOUT.lease("f").key in store.objects
    await lease.release(settled=True)
    assert LAYOUT.lease("f").key not in store.objects


async def test_a_settled_file_never_deletes_a_lease_taken_over() -> None:
    store = MemoryStore()
    clock = ManualClock()
    lease = await LeaseBook(store, LAYOUT, Holder.new("h"), FAST, clock).try_acquire(
        "f", "s3://b/in/f"
    )
    assert lease is not None
    key = LAYOUT.lease("f").key
    await store.put_bytes(key, b'{"Instance": "intruder"}', if_match=lease.etag)
    clock.advance(FAST.ttl_seconds)
    await lease.release(settled=True)
    assert orjson.loads(store.objects[key][0]) == {"Instance": "intruder"}
