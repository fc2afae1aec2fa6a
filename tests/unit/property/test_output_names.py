"""Output names for hostile input keys (docs/design.md §1.9, agent/storage/inputs.py).

Keys made of ``..``, ``.``, empty and doubled ``/``, absolute starts, trailing slashes,
backslashes, NUL, unicode and very long parts are given their output names by
``name_outputs`` (as a run's listing does), directly and through a local manifest
(``parse_manifest``, whose entries are the relative keys). For each file exactly one of
``output`` and ``output_error`` is set, and:

* S3: the output is ``<S3OutputPath>/<key>.out`` in the output bucket, under the output
  prefix (S3 keys are names, not paths: ``..`` in one is kept as it is);
* local: the output path, resolved (``os.path.realpath``), lies inside the output
  directory, and so does its errors file; a key that would leave it is refused with a
  reason that says so and what to do;
* no two local inputs that keep their output name share one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.job import DataUri, parse_data_uri
from agent.storage import InputFile, ManifestError, errors_uri, name_outputs, parse_manifest
from agent.storage.manifest import entry_keys

atoms = st.sampled_from(
    [
        "..",
        ".",
        "",
        "a",
        "b.csv",
        "é",
        "日本",
        "\\",
        "..\\..",
        " ",
        "~",
        "%2e%2e",
        "x" * 300,
        "\x00",
    ]
)


@st.composite
def hostile_keys(draw: st.DrawFn) -> str:
    parts = draw(st.lists(atoms | st.text(max_size=6), min_size=1, max_size=6))
    key = "/".join(parts)
    if draw(st.booleans()):
        key = draw(st.sampled_from(["/", "//", "/./", "../", "./"])) + key
    if draw(st.booleans()):
        key += draw(st.sampled_from(["/", "//", "/.", "/.."]))
    return key


key_lists = st.lists(hostile_keys(), min_size=1, max_size=6, unique=True)


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = tmp_path_factory.mktemp("names") / "out"
    directory.mkdir()
    return os.path.realpath(directory)


def _inside(path: str, directory: str) -> bool:
    # NUL cannot be in a file name, so resolving refuses it; it is no path separator either,
    # so it changes nothing about where the path leads.
    resolved = os.path.realpath(path.replace("\x00", "_NUL_"))
    return resolved.startswith(directory.rstrip("/") + "/")


def _files(keys: list[str], where: DataUri) -> list[InputFile]:
    return [InputFile(DataUri(where.scheme, where.bucket, f"in/{key}"), key, None) for key in keys]


def _check_local(files: list[InputFile], directory: str) -> None:
    kept: dict[str, str] = {}
    for item in files:
        assert (item.output is None) != (item.output_error is None), item
        if item.output is None:
            assert item.output_error is not None
            assert "outside the output directory" in item.output_error
            assert "rename the input or fix its manifest entry" in item.output_error
            continue
        assert item.output.scheme == "file" and item.output.key.endswith(".out")
        assert _inside(item.output.key, directory), (item.relative_key, item.output.key)
        assert _inside(errors_uri(item.output).key, directory)
        if item.problem is None:
            assert item.output.key not in kept, (item.relative_key, kept[item.output.key])
            kept[item.output.key] = item.relative_key
        else:
            assert "is also the output of" in item.problem


@given(keys=key_lists, slash=st.booleans())
def test_local_outputs_stay_in_the_directory(out_dir: str, keys: list[str], slash: bool) -> None:
    output = parse_data_uri(out_dir + ("/" if slash else ""), "/")
    files = _files(keys, output)
    name_outputs(files, output)
    _check_local(files, out_dir)


@given(
    keys=key_lists,
    prefix=st.sampled_from(["", "out", "out/", "out//", "a/../out/", "/"]),
)
def test_s3_outputs_stay_under_the_prefix(keys: list[str], prefix: str) -> None:
    output = DataUri("s3", "bucket", prefix)
    files = _files(keys, output)
    assert name_outputs(files, output) == {}  # S3 names never collide: keys are kept
    base = prefix.rstrip("/")
    for item in files:
        assert item.output_error is None and item.problem is None
        assert item.output is not None and item.output.bucket == "bucket"
        expected = f"{base}/{item.relative_key}.out" if base else f"{item.relative_key}.out"
        assert item.output.key == expected
        assert item.output.key.startswith(base + "/" if base else "")


@given(keys=key_lists)
def test_manifest_entries_stay_in_the_directory(out_dir: str, keys: list[str]) -> None:
    """A local manifest: its entries are the relative keys; NUL and repeats are refused."""
    where = DataUri("file", "", os.path.join(os.path.dirname(out_dir), "in.manifest"))
    document = json.dumps([{"prefix": str(Path(out_dir).parent / "in") + "/"}, *keys])
    try:
        prefix, entries = parse_manifest(document.encode(), where)
        objects = entry_keys(prefix, entries, where)
    except ManifestError as error:
        assert error.problems
        return
    files = [
        InputFile(DataUri("file", "", key), entry, None, index + 1)
        for index, (key, entry) in enumerate(zip(objects, entries, strict=True))
    ]
    output = parse_data_uri(out_dir + "/", "/")
    name_outputs(files, output)
    _check_local(files, out_dir)
