"""The command line (README, Command line): subcommands, exit codes, flag overrides, no secrets."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import agent
from agent.cli import app as cli
from agent.cli.app import main
from agent.log import LogFormat, setup_logging
from agent.runner import RunOptions

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = str(ROOT / "examples" / "job.json")
DESCRIBED = str(ROOT / "examples" / "describe-transform-job.json")
SECRET = "hunter2-prod-db-password"


def write_job(tmp_path: Path, document: dict[str, Any]) -> str:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(document))
    return str(path)


def example() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(Path(EXAMPLE).read_text())
    return document


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """``main`` points the ``agent`` logger at this test's stderr; undo that afterwards."""
    yield
    setup_logging()
    logging.getLogger("agent").handlers.clear()


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[RunOptions]:
    """Capture what ``run`` would hand to the data plane."""
    seen: list[RunOptions] = []

    def fake_start(options: RunOptions) -> int:
        seen.append(options)
        return 0

    monkeypatch.setattr(cli, "_start", fake_start)
    return seen


# ---------------------------------------------------------------------- validate


def test_validate_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--job", EXAMPLE]) == 0
    out = capsys.readouterr().out
    assert "valid transform job nightly-churn-scoring" in out
    assert "s3://example-bucket/input/" in out
    assert "  environment  LOG_LEVEL, MODEL_THRESHOLD (values not shown)\n" in out
    assert "0.5" not in out


def test_validate_shows_the_cap_on_records_per_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", "--job", EXAMPLE]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if "batching" in line]
    assert "MaxPayloadInMB 6, MaxRecordsPerRequest 1000, MaxConcurrentTransforms 4" in row
    document = example()
    del document["Agent"]["MaxRecordsPerRequest"]
    document["BatchStrategy"] = "SingleRecord"
    assert main(["validate", "--job", write_job(tmp_path, document)]) == 0
    assert "MaxRecordsPerRequest no cap," in capsys.readouterr().out
    document["Agent"]["MaxRecordsPerRequest"] = 5
    assert main(["validate", "--job", write_job(tmp_path, document)]) == 0
    out = capsys.readouterr().out
    assert "warning" in out and "MaxRecordsPerRequest 5 has no effect" in out


def test_validate_example_as_a_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "validate", "--job", EXAMPLE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "valid transform job" in result.stdout


def test_described_job_validates_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--job", DESCRIBED]) == 0
    out = capsys.readouterr().out
    assert "$.TransformJobArn" in out and "$.TransformResources.InstanceType" in out


def test_five_different_mistakes_are_all_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = example()
    document["TransformInput"]["SplitType"] = "Lines"  # bad enum
    document["MaxPayloadInMB"] = 500  # out-of-range integer
    document["MaxConcurrentTransforms"] = "4"  # wrong type
    document["TransformOutput"]["AssembleWidth"] = "Line"  # unknown key
    del document["TransformJobName"]  # missing required field
    assert main(["validate", "--job", write_job(tmp_path, document)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert "is not a valid job (5 problems)" in lines[0]
    expected = [
        ("$.TransformInput.SplitType:", 'did you mean "Line"'),
        ("$.MaxPayloadInMB:", "from 0 to 100"),
        ("$.MaxConcurrentTransforms:", "expected an integer, found a string"),
        ("$.TransformOutput.AssembleWidth:", "unknown key; allowed keys here are Accept, Assemble"),
        ("$.TransformJobName:", "this required field is missing"),
    ]
    for path, words in expected:
        (line,) = [line for line in lines[1:] if line.strip().startswith(path)]
        assert words in line
    assert len(lines) == 6


def test_environment_values_are_never_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = example()
    document["Environment"] = {"DB_PASSWORD": SECRET, "BAD-NAME": SECRET, "LONG": SECRET * 500}
    document["BatchStrategy"] = "Everything"
    job = write_job(tmp_path, document)
    assert main(["validate", "--job", job]) == 2
    err = capsys.readouterr().err
    assert "$.Environment.LONG" in err and '$.Environment["BAD-NAME"]' in err
    assert SECRET not in err
    document["Environment"] = {"DB_PASSWORD": SECRET}
    del document["BatchStrategy"]
    job = write_job(tmp_path, document)
    for argv in (
        ["validate", "--job", job],
        ["--job", job],
        ["--log-format", "json", "--job", job],
    ):
        main(argv)
        captured = capsys.readouterr()
        assert SECRET not in captured.out + captured.err
        assert "DB_PASSWORD" in captured.out + captured.err or argv[0] != "validate"


@pytest.mark.parametrize(
    ("content", "words"),
    [("{not json", "is not valid JSON"), ("[1, 2]", "must hold one JSON object")],
)
def test_unusable_file_exits_2_with_one_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, words: str
) -> None:
    path = tmp_path / "job.json"
    path.write_text(content)
    assert main(["validate", "--job", str(path)]) == 2
    assert words in capsys.readouterr().err


def test_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--job", "/nonexistent/job.json"]) == 2
    assert "cannot read the job file /nonexistent/job.json" in capsys.readouterr().err


# ---------------------------------------------------------------------- run


def test_run_logs_ignored_fields_in_one_line(
    capsys: pytest.CaptureFixture[str], started: list[RunOptions]
) -> None:
    assert main(["run", "--job", DESCRIBED]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "ignored" in line]
    assert len(lines) == 1
    assert "$.TransformJobArn" in lines[0] and "$.CreationTime" in lines[0]


def test_run_json_logs(capsys: pytest.CaptureFixture[str], started: list[RunOptions]) -> None:
    assert main(["--log-format", "json", "--job", DESCRIBED]) == 0
    (line,) = capsys.readouterr().err.splitlines()
    entry = json.loads(line)
    assert entry["level"] == "info" and "$.TransformJobArn" in entry["message"]
    assert started[0].log_format == "json"


def test_flags_override_the_file(started: list[RunOptions]) -> None:
    argv = ["--job", EXAMPLE, "--instance-index", "2", "--instance-count", "3"]
    argv += ["--model-url", "http://10.1.2.3:9000", "--state-uri", "s3://other/state/"]
    argv += ["--force", "--summary", "/tmp/summary.json"]
    assert main(argv) == 0
    (options,) = started
    assert options.settings.agent.model_url == "http://10.1.2.3:9000"
    assert str(options.settings.state_uri) == "s3://other/state/"
    assert options.settings.instance_count == 3
    assert (options.instance_index, options.instance_count) == (2, 3)
    assert options.force and options.summary_path == "/tmp/summary.json"
    # Everything the flags did not name comes from the file.
    assert options.settings.transform_job_name == "nightly-churn-scoring"
    assert options.settings.max_payload_mb == 6


def test_without_flags_the_file_wins(started: list[RunOptions]) -> None:
    assert main(["run", "--job", EXAMPLE]) == 0
    (options,) = started
    assert options.settings.agent.model_url == "http://127.0.0.1:8080"
    assert options.instance_index is None and options.instance_count is None
    assert not options.force and options.summary_path is None


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--model-url", "localhost:8080"], "--model-url:"),
        (["--state-uri", "gs://bucket/"], "--state-uri:"),
        (["--instance-index", "1"], "--instance-index 1 is out of range"),
        (["--instance-index", "-1"], "argument --instance-index: -1 is out of range"),
        (["--instance-count", "0"], "argument --instance-count: 0 is out of range"),
        (["--instance-count", "two"], "'two' is not an integer"),
        (["--log-format", "xml"], "invalid choice: 'xml'"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_bad_flags_exit_2(
    capsys: pytest.CaptureFixture[str], started: list[RunOptions], flags: list[str], words: str
) -> None:
    assert main(["--job", EXAMPLE, *flags]) == 2
    assert words in capsys.readouterr().err
    assert started == []


def test_interrupt_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(options: RunOptions) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_start", interrupted)
    assert main(["--job", EXAMPLE]) == 130


# ---------------------------------------------------------------------- other commands


def test_split_forwards_to_the_splitter(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    def run_split(path: str, **options: Any) -> int:
        calls.append((path, options))
        return 0

    module = types.ModuleType("agent.cli.split")
    module.run_split = run_split  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "agent.cli.split", module)
    argv = ["split", "data.rec", "--split-type", "RecordIO", "--batch-strategy", "SingleRecord"]
    assert main([*argv, "--max-payload-mb", "0", "--output-dir", "bodies"]) == 0
    (path, options) = calls[0]
    assert path == "data.rec"
    assert options == {
        "split_type": "RecordIO",
        "batch_strategy": "SingleRecord",
        "max_payload_mb": 0,
        "max_records": None,
        "compression": "None",
        "output_dir": "bodies",
        "out": sys.stdout,
    }
    assert main([*argv, "--max-payload-mb", "1", "--max-records-per-request", "5"]) == 0
    assert calls[1][1]["max_records"] == 5
    assert main([*argv, "--max-payload-mb", "1", "--max-records-per-request", "0"]) == 2
    assert len(calls) == 2
    assert "0 is out of range; use 1 or more" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags",
    [
        ["--split-type", "Lines", "--batch-strategy", "MultiRecord", "--max-payload-mb", "6"],
        ["--split-type", "Line", "--batch-strategy", "MultiRecord", "--max-payload-mb", "101"],
        ["--split-type", "Line", "--max-payload-mb", "6"],
    ],
)
def test_split_usage_errors(capsys: pytest.CaptureFixture[str], flags: list[str]) -> None:
    assert main(["split", "x.csv", *flags]) == 2
    assert "usage: bt-agent split" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["run"], ["validate"], ["split"], ["status"], ["plan"]])
def test_help_everywhere(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: bt-agent")
    assert " ".join(["bt-agent", *command]) in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"bt-agent {agent.__version__}"


def test_no_arguments_prints_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: bt-agent" in capsys.readouterr().err


def test_validate_needs_a_job(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate"]) == 2
    assert "the following arguments are required: --job" in capsys.readouterr().err


# ---------------------------------------------------------------------- log lines


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_log_lines_carry_extra_fields(log_format: LogFormat) -> None:
    stream = io.StringIO()
    setup_logging(log_format, stream=stream)
    logging.getLogger("agent.test").warning("file %s failed", "a.csv", extra={"records": 3})
    line = stream.getvalue().rstrip("\n")
    if log_format == "json":
        entry = json.loads(line)
        assert entry["level"] == "warning" and entry["logger"] == "agent.test"
        assert entry["message"] == "file a.csv failed" and entry["records"] == 3
        assert entry["time"].endswith("Z")
    else:
        assert line.endswith(" WARNING file a.csv failed records=3")
