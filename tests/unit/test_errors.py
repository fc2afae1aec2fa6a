"""One error root and one exit-code table (``agent.errors``), and the codes the command ends with.

Every exception class defined in ``agent`` derives from ``BtAgentError`` and carries an exit
code from the table; the command reads the code from the error. The second half runs the
command into each exit code the way a user meets it, and checks the code and what it said.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import pkgutil
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import agent
from agent.cli.app import build_parser, main
from agent.errors import EXIT_BY_SIGNAL, EXIT_CODE_LABELS, BtAgentError, ExitCode, UsageError
from agent.log import setup_logging
from tests.support.processes import free_port

ROOT = Path(__file__).resolve().parents[2]

# Modules that may not import ``agent``: the model command's supervisor runs as a script of
# its own (``python -I _supervise.py``, standard library only) in another process, and its
# errors never reach the agent.
OUTSIDE_THE_ROOT = {"agent.model._supervise"}


def _exception_classes() -> list[type[BaseException]]:
    """Every exception class defined in a module of ``agent`` (compiled ones included)."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(agent.__path__, "agent."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
            ):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return [found[name] for name in sorted(found)]


CLASSES = _exception_classes()


def _name(cls: type[BaseException]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# ---------------------------------------------------------------------- the root


def test_the_walk_finds_the_error_classes() -> None:
    names = {_name(cls) for cls in CLASSES}
    assert len(names) >= 40, sorted(names)  # 42 when the root came in
    assert {"agent.errors.BtAgentError", "agent.job.schema.JobError"} <= names
    assert "agent.storage.s3.store._ShortRead" in names  # private ones too


@pytest.mark.parametrize("cls", CLASSES, ids=_name)
def test_every_exception_class_derives_from_the_root_and_has_a_code(
    cls: type[BaseException],
) -> None:
    if cls.__module__ in OUTSIDE_THE_ROOT:
        return
    assert issubclass(cls, BtAgentError), f"{_name(cls)} does not derive from BtAgentError"
    assert type(cls.exit_code) is ExitCode and cls.exit_code in EXIT_CODE_LABELS


def test_the_supervisor_stays_outside_the_root() -> None:
    """The one exemption holds only while the supervisor imports nothing of ``agent``."""
    source = (ROOT / "agent" / "model" / "_supervise.py").read_text()
    assert not re.search(r"^\s*(from|import) agent\b", source, re.M)


# The errors of the job's own making: exit 2. Every other class is a failure: exit 1.
USAGE = {
    "agent.errors.UsageError",
    "agent.job.schema.JobError",
    "agent.model.artifacts.ArtifactError",
    "agent.job.jsonpath.PathSyntaxError",
    "agent.storage.base.InputError",
    "agent.storage.manifest.ManifestError",
    "agent.storage.inputs.OutputKeyError",
    "agent.coordination.identity.IdentityError",
    "agent.coordination.records.SettingsMismatch",
    "agent.coordination.lease.ConditionalWritesUnsupported",
}


@pytest.mark.parametrize("cls", CLASSES, ids=_name)
def test_each_class_has_the_exit_code_it_had(cls: type[BaseException]) -> None:
    if cls.__module__ in OUTSIDE_THE_ROOT:
        return
    assert issubclass(cls, BtAgentError)
    expected = ExitCode.USAGE if _name(cls) in USAGE else ExitCode.FAILED
    assert cls.exit_code is expected
    assert issubclass(cls, UsageError) == (expected is ExitCode.USAGE)


# The built-in bases callers catch, kept under the root.
BUILTIN_BASES = {
    "agent.codec.gzip.GzipError": ValueError,
    "agent.dataproc.csv.CsvError": ValueError,
    "agent.dataproc.csv.RowError": ValueError,
    "agent.dataproc.records.DataProcessingError": ValueError,
    "agent.job.jsonpath.PathMiss": ValueError,
    "agent.job.jsonpath.PathSyntaxError": ValueError,
    "agent.split._errors.SplitError": ValueError,
    "agent.split._errors.CorruptInputError": ValueError,
    "agent.split._errors.RecordTooLargeError": ValueError,
    "agent.split._errors.SplitterStateError": RuntimeError,
    "agent.storage.base.InputError": ValueError,
    "agent.storage.manifest.ManifestError": ValueError,
    "agent.storage.inputs.OutputKeyError": ValueError,
    "agent.coordination.identity.IdentityError": ValueError,
    "agent.model.process.ModelCommandError": RuntimeError,
    "agent.storage.s3.store._ShortRead": ConnectionError,
}


@pytest.mark.parametrize("name", sorted(BUILTIN_BASES))
def test_the_builtin_bases_are_kept(name: str) -> None:
    cls = {_name(c): c for c in CLASSES}[name]
    assert issubclass(cls, BUILTIN_BASES[name]) and issubclass(cls, BtAgentError)


def test_the_sub_roots_are_kept() -> None:
    by_name = {_name(c): c for c in CLASSES}
    for child, parent in [
        ("agent.coordination.state.StateError", "agent.storage.base.StorageError"),
        ("agent.coordination.lease.LeaseLost", "agent.coordination.lease.ClaimLost"),
        ("agent.model.execparams.ExecutionParametersError", "agent.model.policy.ModelError"),
        ("agent.model.policy.ModelExitedError", "agent.model.policy.InvocationError"),
        ("agent.model.policy.RetryableStatusError", "agent.model.policy.StatusError"),
        ("agent.storage.base.PreconditionFailed", "agent.storage.base.StorageError"),
    ]:
        assert issubclass(by_name[child], by_name[parent]), (child, parent)


# ---------------------------------------------------------------------- the table


def test_the_table() -> None:
    assert {code.name: int(code) for code in ExitCode} == {
        "COMPLETED": 0,
        "FAILED": 1,
        "USAGE": 2,
        "SIGINT": 130,
        "SIGTERM": 143,
    }
    assert set(EXIT_CODE_LABELS) == set(ExitCode)
    assert dict(EXIT_BY_SIGNAL) == {signal.SIGINT: 130, signal.SIGTERM: 143}
    assert BtAgentError.exit_code is ExitCode.FAILED and UsageError.exit_code is ExitCode.USAGE


def test_help_lists_the_table_as_before() -> None:
    assert build_parser().epilog == (
        "Exit codes: 0 completed, 1 failed (some file failed), 2 invalid job or usage, "
        "130 interrupted (SIGINT), 143 stopped (SIGTERM)."
    )


def test_no_other_module_defines_exit_codes() -> None:
    assignment = re.compile(r"^\s*(EXIT_\w+(\s*,\s*EXIT_\w+)*)\s*[:=]", re.M)
    for path in sorted((ROOT / "agent").rglob("*.py")):
        if path.name == "errors.py" and path.parent.name == "agent":
            continue
        found = assignment.findall(path.read_text())
        assert not found, f"{path.relative_to(ROOT)} defines {[f[0] for f in found]}"


# ---------------------------------------------------------------------- the command, per code


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """``main`` points the ``agent`` logger at this test's stderr; undo that afterwards."""
    yield
    setup_logging()
    logging.getLogger("agent").handlers.clear()


def _job(tmp_path: Path, name: str = "exit-codes", **agent_fields: Any) -> dict[str, Any]:
    source = tmp_path / "in"
    source.mkdir(exist_ok=True)
    (source / "a.csv").write_bytes(b"1,2\n3,4\n")
    return {
        "TransformJobName": name,
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"{source}/"}},
            "SplitType": "Line",
        },
        "TransformOutput": {"S3OutputPath": f"{tmp_path / 'out'}/"},
        "Agent": {"ModelUrl": f"http://127.0.0.1:{free_port()}", **agent_fields},
    }


def _write(tmp_path: Path, job: dict[str, Any]) -> str:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    return str(path)


def _run(tmp_path: Path, job: dict[str, Any], *args: str) -> tuple[int, dict[str, Any] | None]:
    """``bt-agent --job F --summary S``: the exit code and the summary (``None``: none)."""
    summary = tmp_path / "summary.json"
    code = main(["--job", _write(tmp_path, job), "--summary", str(summary), *args])
    return code, json.loads(summary.read_text()) if summary.exists() else None


def test_run_exit_2_for_an_identity_of_the_job_s_own_making(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "x")
    code, summary = _run(tmp_path, _job(tmp_path))
    assert (code, summary) == (2, None)
    assert "JOB_COMPLETION_INDEX='x' is not an integer" in capsys.readouterr().err


def test_run_exit_2_for_inputs_that_cannot_be_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    job = _job(tmp_path)
    missing = tmp_path / "missing.manifest"
    job["TransformInput"]["DataSource"]["S3DataSource"] = {
        "S3DataType": "ManifestFile",
        "S3Uri": str(missing),
    }
    code, summary = _run(tmp_path, job)
    assert (code, summary) == (2, None)
    err = capsys.readouterr().err
    assert f"the manifest file://{missing} does not exist; check S3Uri" in err
    assert "Traceback" not in err


def test_run_exit_1_with_a_failed_summary_when_the_state_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    job = _job(tmp_path, StateUri=f"{tmp_path / 'in' / 'a.csv'}/state/")  # under a file
    code, summary = _run(tmp_path, job)
    assert code == 1 and summary is not None
    assert summary["TransformJobStatus"] == "Failed"
    assert "listing.json: Not a directory" in summary["FailureReason"]
    assert summary["FailureReason"] in capsys.readouterr().err


def test_run_exit_2_when_lease_coordination_finds_no_conditional_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same unwritable state as above, under Lease: the store check refuses (exit 2)."""
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    state = f"{tmp_path / 'in' / 'a.csv'}/state/"
    code, summary = _run(tmp_path, _job(tmp_path, StateUri=state, Coordination="Lease"))
    assert (code, summary) == (2, None)
    err = capsys.readouterr().err
    assert "the conditional-write check failed" in err and "use Agent.Coordination Static" in err


def test_run_exit_1_with_a_failed_summary_when_the_model_port_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        job = _job(tmp_path, ModelCommand=["true"])
        job["Agent"]["ModelUrl"] = f"http://127.0.0.1:{port}"
        code, summary = _run(tmp_path, job)
    assert code == 1 and summary is not None
    assert summary["TransformJobStatus"] == "Failed"
    assert "nothing was sent to it" in summary["FailureReason"]


def _status(tmp_path: Path, job: dict[str, Any], command: str) -> int:
    return main([command, "--job", _write(tmp_path, job)])


def test_status_exit_1_before_the_job_started(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _status(tmp_path, _job(tmp_path), "status") == 1
    assert "the job has not started" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["status", "plan"])
def test_status_and_plan_exit_1_when_the_state_cannot_be_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    state = tmp_path / "state"
    (state / "listing.json").mkdir(parents=True)  # a directory where a file must be
    assert _status(tmp_path, _job(tmp_path, StateUri=f"{state}/"), command) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"bt-agent {command}: cannot read file://{state}/listing.json")


def test_plan_exit_2_for_inputs_that_cannot_be_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _job(tmp_path)
    missing = tmp_path / "missing.manifest"
    job["TransformInput"]["DataSource"]["S3DataSource"] = {
        "S3DataType": "ManifestFile",
        "S3Uri": str(missing),
    }
    assert _status(tmp_path, job, "plan") == 2
    err = capsys.readouterr().err
    assert err == f"bt-agent plan: the manifest file://{missing} does not exist; check S3Uri\n"


def test_plan_exit_0_with_files_and_1_without(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _job(tmp_path)
    assert _status(tmp_path, job, "plan") == 0
    assert "instance 0: 1 files, 8 bytes" in capsys.readouterr().out
    (tmp_path / "in" / "a.csv").unlink()
    assert _status(tmp_path, job, "plan") == 1
    assert capsys.readouterr().out.startswith("no objects found under")


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_run_with_its_code(
    tmp_path: Path, signum: signal.Signals, code: int
) -> None:
    """The model never answers, so the run is waiting for it when the signal comes."""
    job = _job(tmp_path, ModelStartupTimeoutSeconds=120)
    summary, log = tmp_path / "summary.json", tmp_path / "stderr.log"
    argv = [sys.executable, "-m", "agent", "--job", _write(tmp_path, job)]
    env = {k: v for k, v in os.environ.items() if k != "JOB_COMPLETION_INDEX"}
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [*argv, "--summary", str(summary)], cwd=ROOT, env=env, stderr=stderr
        )
        try:
            deadline = time.monotonic() + 60
            while "took the run" not in log.read_text():  # listed: the model's turn next
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            process.send_signal(signum)
            assert process.wait(timeout=60) == code, log.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    document = json.loads(summary.read_text())
    assert document["TransformJobStatus"] == "Stopped"
    assert document["FailureReason"] == f"stopped by {signum.name}"
    assert f"{signum.name} received: stopping" in log.read_text()
