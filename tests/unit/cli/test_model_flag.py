"""``--model`` on the command line (README "From SageMaker: the model file"): validate prints
the model without its environment values, a bad model file or a ModelName that differs from
the job's ends in exit 2 with the problems, and run hands the definition to the runner."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cli import app as cli
from agent.cli.app import main
from agent.job import DataUri
from agent.log import setup_logging
from agent.runner import RunOptions

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = str(ROOT / "examples" / "job.json")
SECRET = "hunter2-model-token"


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    setup_logging()
    logging.getLogger("agent").handlers.clear()


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[RunOptions]:
    seen: list[RunOptions] = []

    def fake_start(options: RunOptions) -> int:
        seen.append(options)
        return 0

    monkeypatch.setattr(cli, "_start", fake_start)
    return seen


def job_file(tmp_path: Path, model_name: str | None) -> str:
    document: dict[str, Any] = json.loads(Path(EXAMPLE).read_text())
    document.pop("ModelName", None)
    if model_name is not None:
        document["ModelName"] = model_name
    path = tmp_path / "job.json"
    path.write_text(json.dumps(document))
    return str(path)


def model_file(tmp_path: Path, **changes: Any) -> str:
    document: dict[str, Any] = {
        "ModelName": "my-model",
        "PrimaryContainer": {
            "Image": "my-model:1",
            "ModelDataUrl": "s3://artifacts/my-model/model.tar.gz",
            "Environment": {"MODEL_TOKEN": SECRET, "SAGEMAKER_PROGRAM": "serve.py"},
        },
        "ExecutionRoleArn": "arn:aws:iam::123456789012:role/x",
    }
    document.update(changes)
    path = tmp_path / "model.json"
    path.write_text(json.dumps(document))
    return str(path)


def test_validate_prints_the_model_without_environment_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = model_file(tmp_path)
    assert main(["validate", "--job", job_file(tmp_path, "my-model"), "--model", model]) == 0
    out = capsys.readouterr().out
    assert f"{model}: valid model my-model" in out
    assert "image        my-model:1" in out
    assert "artifacts    s3://artifacts/my-model/model.tar.gz" in out
    assert "MODEL_TOKEN, SAGEMAKER_PROGRAM (values not shown)" in out
    assert "$.ExecutionRoleArn" in out
    assert SECRET not in out


def test_a_bad_model_file_exits_2_with_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], started: list[RunOptions]
) -> None:
    model = model_file(tmp_path, Containers=[{}, {}], Extra=1)
    job = job_file(tmp_path, None)
    for argv in (["validate", "--job", job, "--model", model], ["--job", job, "--model", model]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{model} is not a valid model file (2 problems)" in err
        assert "$.Containers: give either PrimaryContainer or Containers" in err
        assert "$.Extra: unknown key" in err
    assert started == []


def test_a_model_name_other_than_the_job_s_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], started: list[RunOptions]
) -> None:
    model, job = model_file(tmp_path), job_file(tmp_path, "other-model")
    for argv in (["validate", "--job", job, "--model", model], ["--job", job, "--model", model]):
        assert main(argv) == 2
        assert 'the job\'s ModelName is "other-model"' in capsys.readouterr().err
    assert started == []


def test_an_unreadable_model_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "nope.json")
    assert main(["validate", "--job", job_file(tmp_path, None), "--model", missing]) == 2
    assert f"cannot read the model file {missing}" in capsys.readouterr().err


def test_run_hands_the_model_to_the_runner(tmp_path: Path, started: list[RunOptions]) -> None:
    assert main(["--job", job_file(tmp_path, None), "--model", model_file(tmp_path)]) == 0
    (options,) = started
    assert options.model is not None
    assert options.model.name == "my-model"
    assert options.model.model_data_url == DataUri("s3", "artifacts", "my-model/model.tar.gz")
    assert main(["--job", job_file(tmp_path, None)]) == 0
    assert started[1].model is None
