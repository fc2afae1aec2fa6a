"""Job files near the valid shape, mutated at random (README "The job file", issue 16).

A valid CreateTransformJob document (the shape of examples/job.json) is drawn, then
mutated a few times anywhere in its tree: keys dropped or renamed, values of the wrong
type or out of range, extra keys at any depth, lone surrogates, control characters,
huge strings, deeply nested junk. Its Environment values are tokens ``SECRET-<hex>``.
For every such document:

* ``parse_job`` returns a ``LoadedJob`` or raises ``JobError``, nothing else;
* every problem's JSON path (``agent/job/schema.py: child``) names a place that exists in
  the document, or a field of its section that is absent under a parent that exists (a
  required field, or one the message asks to set);
* no problem message, and nothing ``bt-agent validate`` prints, holds an Environment value.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.cli.validate import validate
from agent.errors import ExitCode
from agent.job import JobError, LoadedJob, parse_job
from agent.job.schema import AGENT, CLIENT, INPUT, OUTPUT, PROCESSING, RESOURCES, TOP

CWD = "/work/property-cwd"  # relative local paths resolve here; nothing is read from it

# The fields each section defines (docs/design.md §1.1, agent/job/schema.py): a problem may
# name one of them while it is absent, asking for it to be set.
SECTION_FIELDS: dict[tuple[str, ...], tuple[str, ...]] = {
    (): TOP,
    ("ModelClientConfig",): CLIENT,
    ("TransformInput",): INPUT,
    ("TransformInput", "DataSource"): ("S3DataSource",),
    ("TransformInput", "DataSource", "S3DataSource"): ("S3DataType", "S3Uri"),
    ("TransformOutput",): OUTPUT,
    ("TransformResources",): RESOURCES,
    ("DataProcessing",): PROCESSING,
    ("Agent",): AGENT,
}

# ----------------------------------------------------------------------------- strategies

secrets = st.binary(min_size=8, max_size=8).map(lambda raw: f"SECRET-{raw.hex()}")
SECRET = re.compile(r"SECRET-[0-9a-f]{16}")

hostile_pieces = st.one_of(
    st.text(max_size=12),
    st.integers(0xD800, 0xDFFF).map(chr),  # half of a UTF-16 pair, alone
    st.sampled_from(["\x00", "\x1b[31m", "\n", "\r\n", "\u2028", "\u0085", "\x7f", "\t"]),
    st.sampled_from(["s3://", "file:///", "../", "//", "$[1:]", "Line", "None", "-", " "]),
    st.integers(64, 20_000).map(lambda n: "x" * n),  # over every length limit, some far over
    st.integers(0, 11_000).map(lambda n: "é" * n),
)
hostile_text = st.lists(hostile_pieces, max_size=4).map("".join)
numbers = st.one_of(
    st.integers(-3, 200),
    st.integers(),
    st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**30, -1, 0]),  # past what orjson writes
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([4.0, 0.5, -0.0, 1e308]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, hostile_text)


def _deep(depth: int) -> Any:
    value: Any = "bottom"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


junk = st.one_of(
    st.recursive(
        scalars,
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(hostile_text, kids, max_size=4),
        max_leaves=8,
    ),
    st.integers(1, 300).map(_deep),
)
known_keys = st.sampled_from(
    sorted({*TOP, *CLIENT, *INPUT, *OUTPUT, *RESOURCES, *PROCESSING, *AGENT})
    + ["S3DataSource", "S3DataType", "S3Uri", "DataSource", "Tags", "ResponseMetadata"]
)
# Near misses: another case, a letter dropped, a space added.
near_miss = known_keys.flatmap(
    lambda key: st.sampled_from([key.lower(), key.upper(), key[:-1], f" {key}", f"{key}s"])
)
new_keys = st.one_of(known_keys, near_miss, hostile_text)


@st.composite
def valid_jobs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid job (parse_job accepts it): the required fields plus optional sections."""
    local = draw(st.booleans())
    job: dict[str, Any] = {
        "TransformJobName": draw(st.sampled_from(["nightly-churn", "j", "a-b-c-1"])),
        "TransformInput": {
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "S3Prefix",
                    "S3Uri": "input/" if local else "s3://example-bucket/input/",
                }
            },
            "ContentType": "text/csv",
            "SplitType": draw(st.sampled_from(["Line", "None", "RecordIO", "TFRecord"])),
            "CompressionType": draw(st.sampled_from(["None", "Gzip"])),
        },
        "TransformOutput": {
            "S3OutputPath": "file:///tmp/out/" if local else "s3://example-bucket/output/",
            "Accept": "text/csv",
            "AssembleWith": "Line",
        },
        "Environment": draw(
            st.dictionaries(
                st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True), secrets, max_size=4
            )
        ),
    }
    if draw(st.booleans()):
        job.update(
            ModelName="churn-xgboost",
            MaxConcurrentTransforms=draw(st.integers(0, 8)),
            MaxPayloadInMB=draw(st.integers(1, 100)),
            BatchStrategy=draw(st.sampled_from(["MultiRecord", "SingleRecord"])),
            ModelClientConfig={"InvocationsTimeoutInSeconds": 600, "InvocationsMaxRetries": 3},
            TransformResources={"InstanceCount": draw(st.integers(1, 100))},
        )
    if draw(st.booleans()) and job["TransformInput"]["SplitType"] == "Line":
        job["DataProcessing"] = {
            "InputFilter": "$[1:]",
            "OutputFilter": "$[0,-1]",
            "JoinSource": "Input",
        }
    if draw(st.booleans()):
        job["Agent"] = {
            "ModelUrl": "http://127.0.0.1:8080",
            "ModelCommand": ["python", "-m", "examples.model_server", "--port", "8080"],
            "Coordination": draw(st.sampled_from(["Static", "Lease"])),
            "ReorderBufferMB": 256,
            "MaxRecordsPerRequest": draw(st.integers(1, 1000)),
            "RequireLinePerRecord": False,
        }
    return job


def _places(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in the tree (the root is ``()``), parents before children."""
    found = [at]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _places(item, (*at, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _places(item, (*at, index))
    return found


def _get(document: Any, at: tuple[Any, ...]) -> Any:
    for key in at:
        document = document[key]
    return document


@st.composite
def mutated_jobs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid job, then 0 to 6 mutations anywhere in its tree."""
    job = copy.deepcopy(draw(valid_jobs()))
    for _ in range(draw(st.integers(0, 6))):
        places = _places(job)
        at = draw(st.sampled_from(places))
        target = _get(job, at)
        op = draw(st.sampled_from(["set", "drop", "rename", "add", "list", "env"]))
        if op == "env":  # the Environment map itself: more secrets, odd names, odd values
            env = job.get("Environment")
            if isinstance(env, dict):
                key = draw(st.one_of(new_keys, st.from_regex(r"[A-Z_]{1,8}", fullmatch=True)))
                env[key] = draw(st.one_of(secrets, secrets.map(lambda s: s * 700), junk))
                if draw(st.integers(0, 9)) == 0:  # over the 16 entries allowed
                    env.update({f"V{i}": draw(secrets) for i in range(17)})
            continue
        if op == "add" and isinstance(target, dict):
            target[draw(new_keys)] = draw(junk)
        elif op == "list" and isinstance(target, list):
            if target and draw(st.booleans()):
                target.pop(draw(st.integers(0, len(target) - 1)))
            else:
                target.append(draw(junk))
        elif at and op in ("set", "drop", "rename"):
            parent, key = _get(job, at[:-1]), at[-1]
            if op == "set":
                parent[key] = draw(junk)
            elif isinstance(parent, dict) and op == "drop":
                del parent[key]
            elif isinstance(parent, dict):
                new = draw(new_keys)
                parent[new] = parent.pop(key)
    # What a JSON decoder can give: a high and a low surrogate drawn side by side are one
    # character once written as JSON text and read back ("\\ud800\\udc00" is U+10000),
    # as in any job file; lone ones stay lone.
    return json.loads(json.dumps(job))


# ----------------------------------------------------------------------------- the paths


def path_steps(path: str) -> list[str | int]:
    """The steps of a problem path as ``child`` writes them: ``$``, then ``.Name``,
    ``[3]`` or ``["any key"]`` (JSON-quoted, ASCII, cut to 200 characters ending ``..."``).

    A cut key is returned as the text before ``..."`` prefixed with ``\\0cut:`` (to be
    matched by prefix); raises ``AssertionError`` on anything else.
    """
    assert path.startswith("$"), path
    steps: list[str | int] = []
    i = 1
    while i < len(path):
        if path[i] == ".":
            name = re.match(r"[A-Za-z_][A-Za-z0-9_]*", path[i + 1 :])
            assert name is not None, path
            steps.append(name.group())
            i += 1 + name.end()
        elif path.startswith("[", i) and path[i + 1 : i + 2].isdigit():
            close = path.index("]", i)
            steps.append(int(path[i + 1 : close]))
            i = close + 1
        else:
            assert path.startswith('["', i), path
            j = i + 2
            while path[j] != '"':
                j += 2 if path[j] == "\\" else 1
            quoted = path[i + 1 : j + 1]
            assert path[j + 1] == "]", path
            i = j + 2
            if len(quoted) == 200 and quoted.endswith('..."'):
                steps.append("\0cut:" + quoted[:196])
            else:
                steps.append(json.loads(quoted))
    return steps


def _find(container: dict[str, Any], step: str) -> str | None:
    """The key of ``container`` a path step names (a cut step matches by its quoted prefix)."""
    if not step.startswith("\0cut:"):
        return step if step in container else None
    prefix = step[len("\0cut:") :]
    for key in container:
        if json.dumps(key, ensure_ascii=True)[:196] == prefix:
            return key
    return None


def check_path(document: dict[str, Any], path: str, message: str) -> None:
    """The path names a place in ``document``, or an absent field of an existing section."""
    steps = path_steps(path)
    here: Any = document
    walked: list[str | int] = []
    for number, step in enumerate(steps):
        last = number == len(steps) - 1
        if isinstance(step, int):
            assert isinstance(here, list) and 0 <= step < len(here), (path, message)
            here = here[step]
        else:
            assert isinstance(here, dict), (path, message)
            key = _find(here, step)
            if key is None:
                assert last, f"{path}: no {step!r} under {walked} ({message})"
                fields = SECTION_FIELDS.get(tuple(walked), ())
                assert step in fields, f"{path} names a key that is not there: {message}"
                return
            here = here[key]
        walked.append(step)


def environment_secrets(document: dict[str, Any]) -> set[str]:
    """The secret tokens held as values (at any depth) under ``$.Environment``."""
    found: set[str] = set()
    stack = [document.get("Environment")]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            found.update(SECRET.findall(value))
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return found


# ----------------------------------------------------------------------------- properties


@given(mutated_jobs())
def test_validation_raises_only_job_errors_at_paths_in_the_document(job: dict[str, Any]) -> None:
    original = copy.deepcopy(job)
    try:
        loaded = parse_job(job, cwd=CWD)
    except JobError as error:
        assert error.problems
        hidden = environment_secrets(job)
        for problem in error.problems:
            check_path(job, problem.path, problem.message)
            for secret in hidden:
                assert secret not in problem.message, problem
                assert secret not in problem.path, problem
    else:
        assert isinstance(loaded, LoadedJob)
    assert job == original  # validation reads the document, never changes it


@pytest.fixture(scope="module")
def job_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jobs") / "job.json"


@given(job=mutated_jobs())
def test_validate_never_prints_an_environment_value(job_file: Path, job: dict[str, Any]) -> None:
    """``bt-agent validate`` in-process: exit 0 with an overview, or 2 with the problems."""
    path = job_file
    # ensure_ascii: a lone surrogate is written as its \\u escape, as a user's file would.
    path.write_text(json.dumps(job, ensure_ascii=True), encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = validate(argparse.Namespace(job=str(path), model=None))
    printed = out.getvalue() + err.getvalue()
    for secret in environment_secrets(job):
        assert secret not in printed
    try:
        parse_job(json.loads(path.read_text(encoding="utf-8")), cwd=None)
    except JobError:
        assert code == ExitCode.USAGE and "bt-agent: " in err.getvalue()
    else:
        assert code == ExitCode.COMPLETED and ": valid transform job " in out.getvalue()
