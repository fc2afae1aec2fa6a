"""A file's output name, end to end: a name that escapes the output directory.

Issue 11 asked whether a manifest key that escapes the output (``../x.csv``), with a model
that never gets ready, leaves ``OutputKeyError`` uncaught in the runner (the files fail
at once then, each named with its output). On the code before the fix it did: the agent
ended with a traceback, exit 1 and no summary. The output name is now worked out once,
when the listing is opened, and carried with the file: the job fails like any other job
whose model never got ready, with a summary, and the file's output is its input's URI
(the name was refused).
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.support.runjob import run_agent, transform_job
from tests.support.servers import ModelServer

pytestmark = pytest.mark.integration


def escaping_job(tmp_path: Path, model_url: str, **agent: object) -> tuple[dict[str, object], Path]:
    """A manifest of ``a.csv`` and ``../x.csv`` (whose output would land outside ``out/``)."""
    inputs = tmp_path / "data" / "in"
    inputs.mkdir(parents=True)
    (inputs / "a.csv").write_bytes(b"a\n")
    (tmp_path / "data" / "x.csv").write_bytes(b"x\n")  # what ../x.csv names
    manifest = tmp_path / "manifest.json"
    manifest.write_bytes(orjson.dumps([{"prefix": f"{inputs}/"}, "a.csv", "../x.csv"]))
    out = tmp_path / "out"
    job = transform_job(
        "escaping-key",
        str(manifest),
        str(out),
        model_url=model_url,
        data_type="ManifestFile",
        split_type="Line",
        agent=agent or None,
    )
    return job, out


def test_an_escaping_manifest_key_with_a_model_never_ready_fails_cleanly(tmp_path: Path) -> None:
    # Nothing answers /ping on this port.
    job, out = escaping_job(tmp_path, "http://127.0.0.1:9/", ModelStartupTimeoutSeconds=1)
    inputs = tmp_path / "data" / "in"

    run = run_agent(job, tmp_path)

    assert "Traceback" not in run.log, run.explain()
    assert (run.returncode, run.status) == (1, "Failed"), run.explain()
    files = run.files()
    escaping, plain = str(tmp_path / "data" / "x.csv"), str(inputs / "a.csv")
    assert sorted(files) == sorted([f"file://{escaping}", f"file://{plain}"]), files
    for entry in files.values():
        assert entry["Status"] == "Failed", entry
        assert (
            "not transformed: the model at http://127.0.0.1:9 is not ready"
            in (entry["FailureReason"])
        ), entry
    assert files[f"file://{plain}"]["Output"] == f"file://{out}/a.csv.out"
    assert files[f"file://{escaping}"]["Output"] == f"file://{escaping}"
    assert not out.exists() or not list(out.glob("*.out"))


def test_an_escaping_manifest_key_fails_its_file_alone_with_the_reason(
    tmp_path: Path, model: ModelServer
) -> None:
    job, out = escaping_job(tmp_path, model.url)

    run = run_agent(job, tmp_path)

    assert "Traceback" not in run.log, run.explain()
    assert (run.returncode, run.status) == (1, "Failed"), run.explain()
    escaping = f"file://{tmp_path / 'data' / 'x.csv'}"
    plain = f"file://{tmp_path / 'data' / 'in' / 'a.csv'}"
    files = run.files()
    assert files[plain]["Status"] == "Completed", files
    assert (out / "a.csv.out").read_bytes() == b"a\n"
    entry = files[escaping]
    assert entry["Status"] == "Failed" and entry["Output"] == escaping, entry
    reason = entry["FailureReason"]
    assert reason.startswith(f"{escaping}: the output of '../x.csv' would be written to "), reason
    assert "outside the output directory" in reason, reason
    assert not (tmp_path / "x.csv.out").exists()
