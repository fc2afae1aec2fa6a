"""What a listing is a listing of, and what it costs (issue 10: defects 1, 2, 3, 5 and 13).

Local files and the real local store throughout: a start whose job lists another source
must not join an unfinished run; inputs whose outputs share a name are found when the
listing is taken; only what the agent writes is left out under the output path; manifest
lookups keep a bounded number of tasks alive; state documents stay small per file; an
empty listing is logged as what it is.
"""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import tracemalloc
from pathlib import Path

import orjson
import pytest

from agent.coordination.base import Coordinator
from agent.coordination.factory import open_coordinator
from agent.coordination.identity import Identity
from agent.coordination.state import StateLayout
from agent.job import AgentConfig, DataUri, JobSettings, TransformInput, TransformOutput
from agent.pipeline import Pipeline, PipelineSettings
from agent.redact import Redactor, install, scrub_state
from agent.report import JobSummary, Progress
from agent.results import FAILED
from agent.runner import _write_summary
from agent.storage import InputFile, ObjectInfo, StorageSettings, list_inputs, open_stores
from agent.storage.manifest import ManifestError

IDENTITY = Identity(0, 1, "test")


def local(path: Path | str) -> DataUri:
    return DataUri("file", "", str(path))


def write(path: Path, data: bytes = b"x\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def job(source: Path | str, output: Path, data_type: str = "S3Prefix") -> JobSettings:
    return JobSettings(
        "job",
        TransformInput(data_type, local(source)),  # type: ignore[arg-type]
        TransformOutput(local(output)),
        agent=AgentConfig(),
    )


def manifest(path: Path, prefix: Path | str, entries: list[str]) -> Path:
    return write(path, orjson.dumps([{"prefix": str(prefix).rstrip("/") + "/"}, *entries]))


def names(coordinator: Coordinator) -> list[str]:
    return [f.uri.key for f in coordinator.listing.files]


# ---------------------------------------------------------------------- defect 1


async def test_a_start_listing_another_source_replaces_an_unfinished_run(tmp_path: Path) -> None:
    a = write(tmp_path / "a" / "a.csv")
    b = write(tmp_path / "b" / "b.csv")
    out = tmp_path / "out"
    async with open_stores() as stores:
        first = await open_coordinator(stores, job(tmp_path / "a", out), IDENTITY)
        assert names(first) == [str(a)]
        # ...and the instance was killed: no summary. The job file now names b/.
        rerun = await open_coordinator(stores, job(tmp_path / "b", out), IDENTITY)
        assert names(rerun) == [str(b)]
        assert rerun.listing.run_id != first.listing.run_id
        # Instances of the same job (the same job file) join that snapshot, racing or not.
        joined = await asyncio.gather(
            *(open_coordinator(stores, job(tmp_path / "b", out), IDENTITY) for _ in range(3))
        )
        assert {c.listing.run_id for c in joined} == {rerun.listing.run_id}


async def test_a_changed_manifest_replaces_an_unfinished_run(tmp_path: Path) -> None:
    write(tmp_path / "in" / "a.csv")
    write(tmp_path / "in" / "b.csv")
    where = manifest(tmp_path / "m.json", tmp_path / "in", ["a.csv"])
    out = tmp_path / "out"
    async with open_stores() as stores:
        first = await open_coordinator(stores, job(where, out, "ManifestFile"), IDENTITY)
        assert [f.relative_key for f in first.listing.files] == ["a.csv"]
        manifest(where, tmp_path / "in", ["b.csv", "a.csv"])  # a new version of the manifest
        again = await open_coordinator(stores, job(where, out, "ManifestFile"), IDENTITY)
        assert [f.relative_key for f in again.listing.files] == ["b.csv", "a.csv"]
        assert again.listing.run_id != first.listing.run_id


async def test_a_listing_that_does_not_say_what_it_lists_is_replaced(tmp_path: Path) -> None:
    b = write(tmp_path / "b" / "b.csv")
    out = tmp_path / "out"
    layout = StateLayout(job(tmp_path / "b", out).state_uri)
    # A snapshot in the shape older versions wrote (no Fingerprint), of other inputs.
    old = {
        "Format": 1,
        "TransformJobName": "job",
        "RunId": "0123456789abcdef",
        "CreatedAt": "2025-01-01T00:00:00.000+00:00",
        "Files": [
            {
                "Scheme": "file",
                "Bucket": "",
                "Key": str(tmp_path / "a" / "a.csv"),
                "RelativeKey": "a.csv",
                "Size": 2,
                "ETag": "2-1",
                "ManifestIndex": None,
            }
        ],
    }
    write(Path(layout.listing.key), orjson.dumps(old))
    async with open_stores() as stores:
        rerun = await open_coordinator(stores, job(tmp_path / "b", out), IDENTITY)
    assert names(rerun) == [str(b)] and rerun.listing.run_id != old["RunId"]


# ---------------------------------------------------------------------- defect 2


def test_inputs_whose_local_outputs_share_a_name_are_found() -> None:
    from agent.storage.inputs import name_outputs, output_collisions  # here, not at the top

    def s3(key: str, index: int) -> InputFile:
        return InputFile(
            DataUri("s3", "b", key), key.removeprefix("wk/"), ObjectInfo(key, 1, '"e"'), index
        )

    files = [s3("wk/x.csv", 1), s3("wk//x.csv", 2), s3("wk/y.csv", 3), s3("wk/./y.csv", 4)]
    refused = name_outputs(files, local("/data/out"))  # each file's output name, once
    assert output_collisions(files, local("/data/out")) == refused
    assert [f.problem for f in files] == [None, refused[files[1].id], None, refused[files[3].id]]
    assert set(refused) == {files[1].id, files[3].id}
    reason = refused[files[1].id]
    assert "s3://b/wk//x.csv (manifest element 2)" in reason
    assert "also the output of s3://b/wk/x.csv (manifest element 1)" in reason
    assert "file:///data/out/x.csv.out" in reason
    # S3 keys are kept as they are: no two inputs of a listing share an S3 output.
    assert output_collisions(files, DataUri("s3", "b", "out/")) == {}


async def test_local_manifest_entries_naming_one_file_are_refused(tmp_path: Path) -> None:
    write(tmp_path / "in" / "f1.csv")
    where = manifest(tmp_path / "m.json", tmp_path / "in", ["f1.csv", "./f1.csv", "sub/../f1.csv"])
    async with open_stores() as stores:
        with pytest.raises(ManifestError) as refused:
            await list_inputs(stores, "ManifestFile", local(where))
    text = str(refused.value)
    assert "element 2 ('./f1.csv') names the same file as element 1 ('f1.csv')" in text
    assert "element 3 ('sub/../f1.csv') names the same file as element 1" in text


# ---------------------------------------------------------------------- defect 3


async def test_an_output_path_above_the_inputs_leaves_them_listed(tmp_path: Path) -> None:
    write(tmp_path / "proj" / "in" / "a.csv")
    write(tmp_path / "proj" / "in" / "sub" / "b.csv")
    write(tmp_path / "proj" / "a.csv.out")  # an earlier run's output: not under the input
    out, state = local(tmp_path / "proj"), local(tmp_path / "proj" / "_bt-agent" / "job/")
    async with open_stores() as stores:
        files = await list_inputs(
            stores, "S3Prefix", local(tmp_path / "proj" / "in"), exclude=(out, state)
        )
    assert [f.relative_key for f in files] == ["a.csv", "sub/b.csv"]


async def test_only_what_the_agent_writes_is_left_out_under_the_output(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write(data / "a.csv")
    write(data / "out" / "a.csv.out")  # an output
    write(data / "out" / ".bt-agent-tmp-0123456789abcdef-ab12cd347")  # a commit under way
    write(data / "out" / ".b.csv.out.bt-agent-tmp-0123abcd")  # one left by an older agent
    write(data / "out" / "_bt-agent" / "other-job" / "listing.json")  # another job's state
    write(data / "out" / "notes.csv")  # the user's own file: an input like any other
    out = local(data / "out")
    async with open_stores() as stores:
        files = await list_inputs(
            stores, "S3Prefix", local(data), exclude=(out, out.join("_bt-agent", "job/"))
        )
    assert [f.relative_key for f in files] == ["a.csv", "out/notes.csv"]


# ---------------------------------------------------------------------- defect 5


async def test_manifest_lookups_keep_a_bounded_number_of_tasks(tmp_path: Path) -> None:
    entries = [f"k-{n:05d}.csv" for n in range(3000)]
    for entry in entries[::2]:
        write(tmp_path / "in" / entry)
    where = manifest(tmp_path / "m.json", tmp_path / "in", entries)
    most = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal most
        while not done.is_set():
            most = max(most, len(asyncio.all_tasks()))
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    try:
        async with open_stores(StorageSettings(head_in_flight=4)) as stores:
            files = await list_inputs(stores, "ManifestFile", local(where))
    finally:
        done.set()
        await watcher
    assert [f.relative_key for f in files] == entries
    assert [f.manifest_index for f in files[:3]] == [1, 2, 3]
    assert sum(f.info is None for f in files) == 1500
    assert most <= 4 + 2, f"{most} tasks alive at once for 4 lookups in flight"


async def test_state_documents_stay_small_per_file(tmp_path: Path) -> None:
    entries = [f"k-{n:05d}.csv" for n in range(1000)]
    where = manifest(tmp_path / "m.json", tmp_path / "in", entries)
    (tmp_path / "in").mkdir()
    out = tmp_path / "out"
    async with open_stores() as stores:
        coordinator = await open_coordinator(stores, job(where, out, "ManifestFile"), IDENTITY)
        listing = Path(coordinator.layout.listing.key).read_bytes()
        again = await open_coordinator(stores, job(where, out, "ManifestFile"), IDENTITY)
    assert again.listing.files == coordinator.listing.files  # it reads back as written
    # The shared parts once, then about [relative key, size, ETag] per file.
    assert len(listing) / 1000 < 40, f"{len(listing) / 1000:.0f} bytes a file"


@pytest.mark.twin_free  # the listing's memory: no code with a twin holds it
async def test_memory_per_file_at_the_end_of_a_run_stays_small(tmp_path: Path) -> None:
    """What a run holds per file from its first claim through both summaries written.

    Each file's completion record is kept until the end (the runner keeps it in place of
    the file's result); the two summaries (``summary.json``, ``--summary``) are written an
    entry at a time, not built whole.
    Every entry names a missing object, so each file fails with a long reason, as in
    ``bench.manifest_scale``.
    """
    count = 20_000
    entries = [f"missing/k-{n:08d}.csv" for n in range(count)]
    where = manifest(tmp_path / "m.json", tmp_path / "in", entries)
    (tmp_path / "in").mkdir()
    summary = JobSummary("job")
    summary_path = tmp_path / "summary.json"
    the_job = job(where, tmp_path / "out", "ManifestFile")
    settings = PipelineSettings.from_job(the_job)
    progress = Progress(count, 0, io.StringIO())
    async with open_stores() as stores:
        coordinator = await open_coordinator(stores, the_job, IDENTITY)
        await coordinator.begin("settings")
        logging.disable(logging.ERROR)  # a line per failed file, each kept by pytest
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            async with coordinator:
                # Missing objects fail before the model is asked: no model client needed.
                pipeline = Pipeline(settings, the_job, stores, None, progress)  # type: ignore[arg-type]
                await pipeline.run(coordinator.files(), summary.files)
                final = await coordinator.finish()
            summary.end(FAILED, f"{count} of {count} files failed")
            _write_summary(summary, str(summary_path))
            peak = tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
            logging.disable(logging.NOTSET)
    assert final is not None and final["TransformJobStatus"] == "Failed"
    stored = orjson.loads(Path(coordinator.layout.summary.key).read_bytes())
    written = orjson.loads(summary_path.read_bytes())
    assert len(stored["Files"]) == len(written["Files"]) == count
    assert written["Files"][-1]["FailureReason"] == coordinator.listing.files[-1].missing_message()
    # Measured: about 1,000 bytes a file (the listing's objects aside): each file's record,
    # kept in place of its result, and the failure reason; 3,400 and more when the runner
    # kept results and records both, each summary was built whole, and files that failed
    # faster than their records were written waited as tasks.
    assert peak / count < 1_500, f"{peak / count:.0f} bytes a file at the peak"


@pytest.mark.parametrize("indent", [False, True])
def test_summaries_written_in_pieces_are_the_whole_documents_bytes(indent: bool) -> None:
    """The streamed summaries are byte for byte what ``orjson.dumps`` of the whole
    document gives (compact for ``summary.json``, indented for ``--summary``), secrets
    taken out of free text as ``scrub_state`` does."""
    from agent.jsonstream import document_pieces  # (new with the streamed summaries)

    option = orjson.OPT_INDENT_2 if indent else 0
    entries = [
        {"Input": 's3://b/k é"', "Status": "Failed", "FailureReason": "TOKEN-123456 leaked"},
        {"Input": "s3://b/TOKEN-123456", "Nested": {"a": [1, {}], "b": {}}, "Empty": []},
    ]
    heads = [{}, {"A": 1, "B": {"x": [1, 2]}}]
    tails = [{}, {"FailureReason": "no TOKEN-123456\nhere", "Z": []}]
    install(Redactor(["TOKEN-123456"]))
    try:
        for head in heads:
            for tail in tails:
                for files in ([], entries[:1], entries * 3):
                    document = {**head, "Files": files, **tail}
                    pieces = document_pieces(
                        {**document, "Files": None}, "Files", files, indent=indent
                    )
                    assert b"".join(pieces) == orjson.dumps(scrub_state(document), option=option)
    finally:
        install(Redactor())


def test_a_stored_summarys_run_and_status_are_read_without_its_entries() -> None:
    """A start (is the run over?) and a finish (is a final summary there?) need the run
    and the status only: the per-file entries of a compact summary are not parsed."""
    from agent.coordination.state import summary_head_of  # (new with the streamed summaries)

    where = local("/state/summary.json")
    document = {
        "Format": 1,
        "TransformJobStatus": "Failed",
        "RunId": "r1",
        "Instances": ["host:1 (instance 0 of 1)"],
        "Files": [{"Input": "s3://b/k", "Status": "Failed"}],
        "FailureReason": "1 of 1 files failed",
    }
    head = summary_head_of(orjson.dumps(document) + b"\n", where)
    assert head == {k: v for k, v in document.items() if k not in ("Files", "FailureReason")}
    # Laid out otherwise (indented, as an older agent wrote it): the whole document.
    assert summary_head_of(orjson.dumps(document, option=orjson.OPT_INDENT_2), where) == document


# ---------------------------------------------------------------------- defect 13


async def test_an_empty_listing_is_not_called_a_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "in").mkdir()
    caplog.set_level(logging.INFO)
    async with open_stores() as stores:
        coordinator = await open_coordinator(
            stores, job(tmp_path / "in", tmp_path / "out"), IDENTITY
        )
    assert coordinator.listing.files == ()
    assert not Path(coordinator.layout.listing.key).exists()
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "the run" in m], messages
    assert any("no run was taken, nothing was stored" in m for m in messages), messages


async def test_a_summary_too_large_to_read_whole_is_judged_by_its_head(tmp_path: Path) -> None:
    """A start and a finish read a stored summary over the small-object limit (a job of
    hundreds of thousands of files) from its first bytes, instead of failing."""
    from agent.coordination.state import read_summary_head, write_summary
    from agent.storage.local import LocalStore

    store = LocalStore(StorageSettings(max_small_object_bytes=4096))
    layout = StateLayout(DataUri("file", "", f"{tmp_path}/state/"))
    entries = [{"Input": f"file:///in/{i:06d}.csv", "Status": "Failed"} for i in range(2000)]
    head = {"Format": 1, "TransformJobName": "job", "TransformJobStatus": "Failed"}
    summary = {**head, "RunId": "r1", "Files": entries}
    assert await write_summary(store, layout, summary)
    assert (tmp_path / "state" / "summary.json").stat().st_size > 4096
    assert await read_summary_head(store, layout) == {**head, "RunId": "r1"}
    # The same run's final summary is not written twice; the next run's replaces it.
    assert not await write_summary(store, layout, summary)
    assert await write_summary(store, layout, {**summary, "RunId": "r2"})
    assert (await read_summary_head(store, layout) or {}).get("RunId") == "r2"
