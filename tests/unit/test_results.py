"""``agent.results``: each file's result and the statuses, apart from their presentation.

Coordination, the pipeline and the runner take the statuses and ``FileResult`` from here;
``agent.report`` (the summary and the progress display) is presentation only, and nothing
in coordination imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from agent import report, results
from agent.report import JobSummary
from agent.results import (
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    LOST,
    STOPPED,
    FileOutcome,
    FileResult,
    file_entry,
)

AGENT = Path(__file__).resolve().parents[2] / "agent"


def _imports(path: Path) -> dict[str, set[str]]:
    """Every module ``path`` imports, anywhere in it (functions, ``TYPE_CHECKING``), and the
    names it takes from each."""
    found: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            found.setdefault(node.module, set()).update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                found.setdefault(alias.name, set())
    return found


def test_the_statuses_are_the_words_of_the_summary() -> None:
    assert (IN_PROGRESS, COMPLETED, FAILED, STOPPED, LOST) == (
        "InProgress",
        "Completed",
        "Failed",
        "Stopped",
        "Lost",
    )


def test_report_defines_none_of_them_again() -> None:
    for name in ("IN_PROGRESS", "COMPLETED", "FAILED", "STOPPED", "LOST"):
        assert getattr(report, name, None) is None or getattr(report, name) is getattr(
            results, name
        )
    tree = ast.parse((AGENT / "report.py").read_text())
    defined = {node.name for node in tree.body if isinstance(node, ast.ClassDef | ast.FunctionDef)}
    assert defined.isdisjoint({"FileResult", "FileOutcome", "file_entry"})


def test_results_is_at_the_bottom() -> None:
    """It imports nothing of ``agent``: every layer may use it."""
    assert [m for m in _imports(AGENT / "results.py") if m.split(".")[0] == "agent"] == []


@pytest.mark.parametrize(
    "path", sorted((AGENT / "coordination").glob("*.py")), ids=lambda p: p.name
)
def test_coordination_never_imports_the_presentation(path: Path) -> None:
    assert "agent.report" not in _imports(path)


@pytest.mark.parametrize("name", ["pipeline/file.py", "runner.py", "cli/status.py"])
def test_the_rest_takes_only_the_presentation_from_report(name: str) -> None:
    imports = _imports(AGENT / name)
    assert imports.get("agent.report", set()) <= {"JobSummary", "Phases", "Progress"}


def test_a_file_result_and_its_entry() -> None:
    result = FileResult("s3://b/in/a.csv", "s3://b/out/a.csv.out")
    assert result.status == IN_PROGRESS and not hasattr(result, "__dict__")
    result.records, result.requests, result.input_bytes, result.output_bytes = 3, 1, 12, 9
    result.output_etag = '"e"'
    result.finish(COMPLETED)
    assert result.seconds >= 0
    entry = result.as_json()
    assert entry == {
        "Input": "s3://b/in/a.csv",
        "Output": "s3://b/out/a.csv.out",
        "Status": "Completed",
        "Records": 3,
        "Requests": 1,
        "InputBytes": 12,
        "OutputBytes": 9,
        "Seconds": round(result.seconds, 3),
        "OutputETag": '"e"',
    }
    result.finish(FAILED, "s3://b/in/a.csv: no")
    assert result.as_json()["FailureReason"] == "s3://b/in/a.csv: no"
    assert file_entry("i", "o", STOPPED, 0, 0, 0, 0, 0.0, None, None) == {
        "Input": "i",
        "Output": "o",
        "Status": "Stopped",
        "Records": 0,
        "Requests": 0,
        "InputBytes": 0,
        "OutputBytes": 0,
        "Seconds": 0.0,
    }


def test_the_summary_counts_file_outcomes() -> None:
    done, failed = FileResult("a", "a.out"), FileResult("b", "b.out")
    done.records, failed.records = 2, 1
    done.finish(COMPLETED)
    failed.finish(FAILED, "b: no")
    files: list[FileOutcome] = [done, failed]
    summary = JobSummary("job", files=files)
    assert summary.status == IN_PROGRESS
    head = summary.head_json()
    assert (head["FilesTotal"], head["FilesCompleted"], head["FilesFailed"]) == (2, 1, 1)
    assert head["Records"] == 3
