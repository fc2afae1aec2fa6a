"""The hostile-input corpus (``bench/corpus``, issue 16 item 3), replayed against SeaweedFS.

* Every case parses, names only known placeholders, generators and model kinds, and stays
  small (the corpus is data kept in the repository).
* Every case is replayed through ``python -m agent`` (``bench.corpus_replay.replay``), one
  test per case so xdist spreads them: each must end in its clear error with exactly the
  outputs it names and nothing else written. A case recorded with ``known_defect`` is an
  agent bug kept in the corpus: its test is ``xfail(strict=True)``, so a fix shows.
* The checker itself can fail: a case given wrong expectations yields a verdict naming each
  thing that differed, and an open multipart upload or a "secret" that is in the log is
  found.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent._compat import NO_EXTENSIONS
from bench.corpus_replay import (
    CORPUS_DIR,
    MAX_CASE_FILE_BYTES,
    NOBODY_URL,
    STATE_ALLOWED,
    Case,
    Context,
    ModelPool,
    ReplayEnv,
    RunningModel,
    blob,
    load_cases,
    replay,
)
from tests.support.servers import SeaweedFS

pytestmark = pytest.mark.integration

CASES = load_cases()
MIB = 1 << 20


@pytest.fixture(scope="session")
def corpus_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelPool]:
    """Example model servers shared by the cases this worker replays."""
    pool = ModelPool(tmp_path_factory.mktemp("corpus-models"))
    try:
        yield pool
    finally:
        pool.close()


# The cases whose clear error comes from code with a pure-Python twin (splitters, CRC-32C,
# gzip framing, DataProcessing, line counting): the only ones the pure pass
# (BT_AGENT_NO_EXTENSIONS=1) replays again. The others (job, model file, archive, manifest,
# answer-size, listing and process cases) run the same Python code in both passes, so
# repeating them would cost about 1.5 s of CPU each for nothing.
TWIN_CASES = (
    "recordio-",
    "tfrecord-",
    "gzip-",
    "record-over-",
    "none-object-",
    "input-filter-",
    "jsonlines-",
    "answer-too-few-lines",
)


def case_param(case: Case) -> object:
    marks = []
    if NO_EXTENSIONS and not case.id.startswith(TWIN_CASES):
        reason = "no pure-Python twin takes part in this case; the compiled pass replays it"
        marks.append(pytest.mark.skip(reason=reason))
    if case.known_defect is not None:
        marks.append(pytest.mark.xfail(strict=True, reason=f"known defect: {case.known_defect}"))
    return pytest.param(case, id=case.id, marks=marks)


def test_the_corpus_parses_and_stays_small(tmp_path: Path) -> None:
    assert len(CASES) >= 40, [case.id for case in CASES]
    sizes = [case.path.stat().st_size for case in CASES]
    assert max(sizes) <= MAX_CASE_FILE_BYTES and sum(sizes) < 256 << 10, sizes
    assert len({case.doc["job"]["TransformJobName"] for case in CASES if "job" in case.doc}) > 1
    for case in CASES:
        assert len(case.description) > 20 and case.doc.get("source"), case.id
        # The inputs it makes: small, except the few that must pass the smallest bound
        # (MaxPayloadInMB 1) by a byte.
        ctx = Context(case, "b", RunningModel(NOBODY_URL, 9, lambda: 0), tmp_path / case.id)
        for name, spec in case.doc.get("objects", {}).items():
            if "symlink" not in spec:
                assert len(blob(spec, ctx)) <= MIB + 2, (case.id, name)


def test_a_malformed_case_is_refused_naming_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text(
        '{"description": "x", "job": {"S3Uri": "{nowhere}"}, "model": {"kind": "psychic"},'
        ' "objects": {"a": {"generator": "nope"}}, "expect": {}}'
    )
    with pytest.raises(ValueError) as refused:
        load_cases(tmp_path)
    text = str(refused.value)
    for part in ("bad.json", "nowhere", "psychic", "nope", "exit"):
        assert part in text, text


def test_what_the_state_prefix_may_keep() -> None:
    for kept in ("listing.json", "summary.json", "done/abc.json", "j/done/abc.json"):
        assert STATE_ALLOWED.search(kept), kept
    for leftover in ("uploads/f/h.json", "probe/t.json", "leases/f.json", "shards/f/0-9.out"):
        assert not STATE_ALLOWED.search(leftover), leftover


@pytest.mark.parametrize("case", [case_param(case) for case in CASES])
def test_the_case_ends_in_its_clear_error(
    case: Case,
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    tmp_path: Path,
    corpus_models: ModelPool,
) -> None:
    verdict = replay(case, ReplayEnv(s3_server, bucket, tmp_path, corpus_models))
    assert verdict.held, verdict.explain()


def test_the_checker_names_every_expectation_that_differs(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str, tmp_path: Path
) -> None:
    (original,) = [case for case in CASES if case.id == "recordio-bad-magic"]
    doc = {**original.doc, "expect": dict(original.expect)}
    expect = doc["expect"]
    expect["exit"] = 0
    expect["status"] = "Completed"
    expect["files"] = {**expect["files"], "{root}/in/bad": "Completed"}
    expect["errors"] = [{"in": "{root}/in/bad", "contains": ["at byte 17"]}]
    expect["outputs"] = {
        "{root}/out/good.out": {"text": "not what the model answered"},
        "{root}/out/bad.out": {"text": "never written"},
    }
    expect["secrets_absent"] = ["0xdeadbeef"]  # it is in the log: the check must see it
    wrong = Case("wrong-expectations", original.path, doc)
    # An upload left open in the bucket (by anyone) fails the verdict too.
    client = s3_server.sync_client()
    upload = client.create_multipart_upload(Bucket=bucket, Key="elsewhere/x.out")

    verdict = replay(wrong, ReplayEnv(s3_server, bucket, tmp_path))

    client.abort_multipart_upload(Bucket=bucket, Key="elsewhere/x.out", UploadId=upload["UploadId"])
    assert not verdict.held and not verdict.ok
    text = verdict.explain()
    root = f"s3://{bucket}"
    for needle in (
        "exit code 1, expected 0",
        "status Failed, expected Completed",
        f"{root}/in/bad: status Failed, expected Completed",
        "does not say 'at byte 17'",
        f"{root}/out/good.out is b'",
        f"the expected output {root}/out/bad.out was not written",
        "the secret 0xd… appears in the log",
        "open multipart uploads: ['elsewhere/x.out']",
    ):
        assert needle in text, f"{needle!r} not in:\n{text}"


def test_the_checker_finds_a_write_where_nothing_belongs(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str, tmp_path: Path
) -> None:
    (original,) = [case for case in CASES if case.id == "output-above-input"]
    doc = {**original.doc, "expect": dict(original.expect)}
    doc["expect"]["outputs"] = {"{root}/proj/a.csv.out": {"text": "a\n"}}  # one left out
    verdict = replay(
        Case("one-output-unexpected", original.path, doc), ReplayEnv(s3_server, bucket, tmp_path)
    )
    assert not verdict.held
    assert verdict.problems == [
        f"written where nothing belongs: s3://{bucket}/proj/sub/b.csv.out (b'b\\n')"
    ], verdict.explain()


def test_the_corpus_directory_is_the_default() -> None:
    assert [case.id for case in load_cases(CORPUS_DIR)] == [case.id for case in CASES]
