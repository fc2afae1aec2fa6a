"""The model's container: the engine found on PATH, names, and the exact ``run``/``rm`` argv."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from agent.job import JobSettings, parse_job
from agent.model.container import (
    NAME_PREFIX,
    ContainerError,
    container_environment,
    container_name,
    find_runtime,
    loggable_argv,
    run_argv,
    stop_argv,
)

ENGINE_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")


def executables(directory: Path, *names: str) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = directory / name
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(0o755)
    return str(directory)


# ----------------------------------------------------------------------------- find_runtime


def test_the_preferred_runtime_is_taken_when_on_path(tmp_path: Path) -> None:
    path = executables(tmp_path / "bin", "docker", "podman")
    assert find_runtime("podman", path) == str(tmp_path / "bin" / "podman")
    assert find_runtime("docker", path) == str(tmp_path / "bin" / "docker")


def test_without_a_preference_the_first_found_of_docker_then_podman(tmp_path: Path) -> None:
    first = executables(tmp_path / "a", "podman")
    second = executables(tmp_path / "b", "docker")
    both = os.pathsep.join([first, second])
    assert find_runtime(None, both) == str(tmp_path / "b" / "docker")
    assert find_runtime(None, first) == str(tmp_path / "a" / "podman")


def test_a_preferred_runtime_missing_from_path_is_named(tmp_path: Path) -> None:
    path = executables(tmp_path / "bin", "docker")
    with pytest.raises(ContainerError, match=r"Agent.ContainerRuntime is 'podman'.*PATH"):
        find_runtime("podman", path)


def test_no_runtime_at_all_says_to_install_one_or_set_model_command(tmp_path: Path) -> None:
    path = executables(tmp_path / "bin", "dockerd", "not-podman")
    with pytest.raises(ContainerError, match=r"neither docker nor podman.*Agent.ModelCommand"):
        find_runtime(None, path)


def test_a_file_that_is_not_executable_is_not_a_runtime(tmp_path: Path) -> None:
    (tmp_path / "docker").write_text("not a program")
    with pytest.raises(ContainerError, match="neither docker nor podman"):
        find_runtime(None, str(tmp_path))


# ----------------------------------------------------------------------------- names


def test_names_are_valid_for_both_engines_and_differ_by_replica() -> None:
    names = [container_name("nightly-scoring", replica) for replica in range(3)]
    assert len(set(names)) == 3
    for replica, name in enumerate(names):
        assert ENGINE_NAME.fullmatch(name), name
        assert name.startswith(f"{NAME_PREFIX}nightly-scoring-")
        assert name.endswith(f"-r{replica}")


def test_a_name_with_other_characters_is_sanitised_and_bounded() -> None:
    name = container_name("-é job/ with spaces" + "x" * 200, 12)
    assert ENGINE_NAME.fullmatch(name), name
    assert name.startswith(NAME_PREFIX) and name.endswith("-r12")
    assert len(name) < 64
    assert ENGINE_NAME.fullmatch(container_name("///", 0))


# ----------------------------------------------------------------------------- run_argv

ENV = {"MODEL_ONLY": "m", "SHARED": "job", "SAGEMAKER_BIND_TO_PORT": "8081"}
HEAD = ["run", "--rm", "--name", "c1", "--network", "host", "-v", "/models/m:/opt/ml/model:ro"]
ENV_FLAGS = ["-e", "MODEL_ONLY=m", "-e", "SHARED=job", "-e", "SAGEMAKER_BIND_TO_PORT=8081"]


@pytest.mark.parametrize("runtime", ["docker", "podman", "/usr/bin/docker"])
def test_run_argv_without_a_device(runtime: str) -> None:
    argv = run_argv(runtime, "c1", "img:1", "/models/m", ENV, device=None)
    assert argv == [runtime, *HEAD, *ENV_FLAGS, "img:1", "serve"]


@pytest.mark.parametrize(
    ("runtime", "device", "flags"),
    [
        ("docker", "1", ["--gpus", "device=1"]),
        ("docker", "0,1", ["--gpus", '"device=0,1"']),
        ("docker", "GPU-5d3c", ["--gpus", "device=GPU-5d3c"]),
        ("podman", "1", ["--device", "nvidia.com/gpu=1"]),
        ("podman", "0,1", ["--device", "nvidia.com/gpu=0", "--device", "nvidia.com/gpu=1"]),
    ],
)
def test_run_argv_with_a_device(runtime: str, device: str, flags: list[str]) -> None:
    argv = run_argv(runtime, "c1", "img:1", "/models/m", ENV, device=device)
    assert argv == [runtime, *HEAD, *ENV_FLAGS, *flags, "img:1", "serve"]


def test_a_relative_model_dir_is_mounted_by_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = run_argv("docker", "c1", "img", "models/m", {}, device=None)
    assert argv[argv.index("-v") + 1] == f"{tmp_path}/models/m:/opt/ml/model:ro"


def test_a_model_dir_the_mount_flag_cannot_carry_is_refused() -> None:
    with pytest.raises(ContainerError, match=r"Agent.ModelDir '/a:b'"):
        run_argv("docker", "c1", "img", "/a:b", {}, device=None)


def test_a_bad_variable_name_or_an_unknown_engine_is_refused() -> None:
    with pytest.raises(ContainerError, match="'A=B'"):
        run_argv("docker", "c1", "img", "/m", {"A=B": "1"}, device=None)
    with pytest.raises(ContainerError, match="neither docker nor podman"):
        run_argv("nerdctl", "c1", "img", "/m", {}, device=None)


def test_the_loggable_argv_names_variables_but_shows_no_value() -> None:
    argv = run_argv("docker", "c1", "img", "/m", {"TOKEN": "s3cr3t=x", "B": "2"}, device="0")
    shown = loggable_argv(argv)
    assert "s3cr3t" not in shown and "=2" not in shown
    assert "-e TOKEN -e B --gpus device=0 img serve" in shown


def job(**top: Any) -> JobSettings:
    document: dict[str, Any] = {
        "TransformJobName": "container-test",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/in/"}}
        },
        "TransformOutput": {"S3OutputPath": "s3://b/out/"},
        **top,
    }
    return parse_job(document).settings


def test_the_container_environment_is_model_then_job_then_sagemaker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # the agent's own: never the container's
    settings = job(Environment={"SHARED": "job", "JOB_ONLY": "j"}, MaxConcurrentTransforms=2)
    env = container_environment(settings, {"MODEL_ONLY": "m", "SHARED": "model"}, port=8082)
    assert list(env.items()) == [
        ("MODEL_ONLY", "m"),
        ("SHARED", "job"),
        ("JOB_ONLY", "j"),
        ("SAGEMAKER_BATCH", "true"),
        ("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", "2"),
        ("SAGEMAKER_BIND_TO_PORT", "8082"),
    ]


# ----------------------------------------------------------------------------- stop_argv


@pytest.mark.parametrize("runtime", ["docker", "/opt/bin/podman"])
def test_stop_argv_removes_by_name(runtime: str) -> None:
    assert stop_argv(runtime, "bt-agent-x-1-r0") == [runtime, "rm", "-f", "bt-agent-x-1-r0"]
