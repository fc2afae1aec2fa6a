"""The container image, built for real (deploy/image/README.md): ``deploy/image/build.py``
(what ``make image`` runs) builds the repository's Dockerfile with podman from a wheelhouse
made from this tree, on a Debian base made with debootstrap. No container can run on this
machine (cgroups), so the image's root file system is mounted read-only and its entry point
is run with chroot, as its user, with its environment. Asserted: ``bt-agent --version`` is
this project's version, the compiled extensions are the ones imported, the runtime
dependencies import, and the image's configuration is what the Dockerfile's last stage says.

The image is built anew each run from the current sources (its layers are never reused);
only the base, which holds no project file, is made once and kept (``podman images
localhost/bt-agent-base``; the tarball in ``~/.cache/bt-agent``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import agent

pytestmark = [pytest.mark.integration, pytest.mark.podman, pytest.mark.twin_free]

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "deploy" / "image" / "build.py"
BASE = "localhost/bt-agent-base:bookworm"
COMPILED = ("agent.split._splitters_c", "agent.codec._crc32c_c", "agent.dataproc._dataproc_c")

# Run inside the image with the COMPILED names as arguments: what is imported from where.
PROBE = """
import importlib, json, sys
import agent, agent.split, agent.codec.crc32c, agent.dataproc.records
import aiobotocore, aiohttp, orjson, prometheus_client, uvloop
print(json.dumps({
    "version": agent.__version__,
    "implementations": [
        agent.split.implementation(),
        agent.codec.crc32c.implementation(),
        agent.dataproc.records.implementation(),
    ],
    "files": {name: importlib.import_module(name).__file__ for name in sys.argv[1:]},
}))
"""


def why_not() -> str | None:
    """Why the image cannot be built and entered here, or None when it can."""
    if os.environ.get("BT_AGENT_NO_EXTENSIONS"):
        return (
            "BT_AGENT_NO_EXTENSIONS is set: the image installs the compiled wheel and never "
            "uses the pure-Python twins, so the twins' pass does not build it again"
        )
    if shutil.which("podman") is None:
        return "podman is not installed (Debian: apt-get install podman); it builds the image"
    if os.geteuid() != 0:
        return (
            "needs root: debootstrap makes the base, and the image's root file system is "
            "mounted with `podman image mount` and entered with chroot"
        )
    if sys.version_info[:2] != (3, 11):
        return (
            "the wheelhouse is built with this interpreter and the base's python3 is 3.11; "
            f"run the tests with Python 3.11 (this is {sys.version.split()[0]})"
        )
    present = subprocess.run(["podman", "image", "exists", BASE], capture_output=True)
    if present.returncode != 0 and shutil.which("debootstrap") is None:
        return (
            f"debootstrap is not installed (Debian: apt-get install debootstrap) and there "
            f"is no base image {BASE} to reuse; it makes the base"
        )
    return None


def last_stage(dockerfile: Path) -> dict[str, str]:
    """The last stage's instructions (the image's), joined across continuation lines."""
    instructions: list[str] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip().removesuffix("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            instructions.append(pending.strip())
            pending = ""
    start = max(i for i, text in enumerate(instructions) if text.upper().startswith("FROM "))
    stage: dict[str, str] = {}
    for text in instructions[start:]:
        keyword, _, value = text.partition(" ")
        stage[keyword.upper()] = value.strip()
    return stage


def passwd_entry(root: Path, user: str) -> tuple[int, int, str]:
    """``user``'s uid, gid and home in the image's /etc/passwd."""
    for line in (root / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user or fields[2] == user:
            return int(fields[2]), int(fields[3]), fields[5]
    raise AssertionError(f"user {user!r} is not in the image's /etc/passwd")


@pytest.fixture
def image(tmp_path: Path) -> Iterator[str]:
    """The image built from this tree by deploy/image/build.py; removed afterwards."""
    reason = why_not()
    if reason:
        pytest.skip(reason)
    tag = f"localhost/bt-agent-test:{uuid.uuid4().hex[:12]}"
    try:
        done = subprocess.run(
            [sys.executable, str(BUILD), "--tag", tag, "--build-dir", str(tmp_path / "build")],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        print(done.stdout)
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
        yield tag
    finally:
        subprocess.run(["podman", "rmi", "--force", tag], capture_output=True)


@contextmanager
def mounted(image: str) -> Iterator[Path]:
    """The image's root file system, mounted read-only by podman, unmounted afterwards."""
    done = subprocess.run(
        ["podman", "image", "mount", image], capture_output=True, text=True, check=True
    )
    try:
        yield Path(done.stdout.strip())
    finally:
        subprocess.run(["podman", "image", "unmount", image], capture_output=True, check=True)


def run_in_image(
    rootfs: Path, config: dict[str, Any], argv: list[str]
) -> subprocess.CompletedProcess[str]:
    """``argv`` as `docker run` would start it: the image's user, WORKDIR and Env only."""
    uid, gid, home = passwd_entry(rootfs, str(config["User"]))
    env = [str(item) for item in config.get("Env") or []]
    return subprocess.run(
        [
            "chroot",
            f"--userspec={uid}:{gid}",
            str(rootfs),
            "/usr/bin/env",
            "-i",
            "-C",
            str(config["WorkingDir"]),
            f"HOME={home}",
            *env,
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_image_runs_this_trees_compiled_agent(image: str) -> None:
    # One test, one build: under pytest-xdist, tests of one module may run on several workers.
    inspected = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{json .Config}}", image],
        capture_output=True,
        text=True,
        check=True,
    )
    config: dict[str, Any] = json.loads(inspected.stdout)

    # The image's configuration is the Dockerfile's last stage.
    stage = last_stage(ROOT / "Dockerfile")
    assert config["Entrypoint"] == json.loads(stage["ENTRYPOINT"]) == ["bt-agent"]
    assert config["Cmd"] == json.loads(stage["CMD"])
    assert config["User"] == stage["USER"]
    assert config["User"] not in ("", "root", "0")
    assert config["WorkingDir"] == stage["WORKDIR"]

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert project == agent.__version__
    with mounted(image) as rootfs:
        # `docker run IMAGE --version`: the entry point, found on the image's PATH.
        done = run_in_image(rootfs, config, [*config["Entrypoint"], "--version"])
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"bt-agent {project}"

        # The compiled extensions are the modules in use, and the dependencies import.
        done = run_in_image(rootfs, config, ["python3", "-c", PROBE, *COMPILED])
        assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["version"] == project
    assert "python" not in found["implementations"], found
    assert sorted(found["files"]) == sorted(COMPILED)
    for name, path in found["files"].items():
        assert path.startswith("/opt/bt-agent/lib/python3.11/site-packages/"), (name, path)
        assert path.endswith(".so"), (name, path)
