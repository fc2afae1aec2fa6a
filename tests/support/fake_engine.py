"""A stand-in container engine: executables named ``docker`` and ``podman`` for the tests.

No container engine runs on the test machine, so ``install(directory)`` writes a small
Python script under both names; put the directory first on PATH. The script:

* ``run``: checks the argv has the shape ``agent/model/container.py: run_argv`` promises
  (``run --rm --name N --network host -v SRC:/opt/ml/model:ro -e K=V … [GPU flags] IMAGE
  serve``, GPU flags of its own engine only), records it as one JSON line in the file named
  by ``BT_FAKE_ENGINE_LOG`` (with the parsed image, mount, variables, devices and the files
  the mount holds), writes its pid to ``<directory>/<name>.pid``, then becomes the example
  model server (``os.execve``, same pid) listening on ``SAGEMAKER_BIND_TO_PORT``, with the
  ``-e`` variables as its whole environment, as a container's process has. A bad argv exits
  125 (docker's code for a refused ``run``) with the reason on stderr.
* ``rm -f NAME``: records the call; if NAME's server runs, SIGTERMs it and waits until it
  is gone (SIGKILL after 10 s); exits 0. An unknown NAME answers as docker does: ``No such
  container``, status 1.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from tests.support.servers import REPO_ROOT

LOG_VARIABLE = "BT_FAKE_ENGINE_LOG"

_SCRIPT = r"""#!{python}
import json, os, signal, sys, time

STATE = {state!r}
REPO = {repo!r}
ENGINE = os.path.basename(sys.argv[0])
GPU_FLAG = {{"docker": "--gpus", "podman": "--device"}}[ENGINE]


def record(entry):
    entry = {{"engine": ENGINE, "argv": sys.argv[1:], **entry}}
    with open(os.environ["{log}"], "a") as log:
        log.write(json.dumps(entry) + "\n")


def refuse(reason):
    record({{"refused": reason}})
    print(f"{{ENGINE}}: {{reason}}", file=sys.stderr, flush=True)
    sys.exit(125)


def alive(pid):
    try:
        with open(f"/proc/{{pid}}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def run(args):
    name = args[2] if len(args) > 2 else ""
    fixed = ["--rm", "--name", name, "--network", "host"]
    if args[:5] != fixed or not name or name.startswith("-"):
        refuse(f"expected --rm --name NAME --network host first, got {{args[:5]}}")
    rest = args[5:]
    if rest[:1] != ["-v"] or len(rest) < 2:
        refuse("expected -v SOURCE:/opt/ml/model:ro after --network host")
    source, _, target = rest[1].partition(":")
    if target != "/opt/ml/model:ro" or not os.path.isabs(source) or not os.path.isdir(source):
        refuse(f"bad mount {{rest[1]!r}}: want an existing absolute directory:/opt/ml/model:ro")
    rest, env, devices = rest[2:], {{}}, []
    while rest and rest[0] == "-e":
        key, sep, value = rest[1].partition("=") if len(rest) > 1 else ("", "", "")
        if not sep or not key:
            refuse(f"bad -e {{rest[1:2]}}: want KEY=VALUE")
        env[key] = value
        rest = rest[2:]
    while rest and rest[0] == GPU_FLAG:
        if len(rest) < 2:
            refuse(f"{{GPU_FLAG}} without a value")
        devices.append(rest[1])
        rest = rest[2:]
    if len(rest) != 2 or rest[1] != "serve" or rest[0].startswith("-"):
        refuse(f"expected IMAGE serve at the end, got {{rest}}")
    port = env.get("SAGEMAKER_BIND_TO_PORT", "")
    if not port.isdigit():
        refuse("no -e SAGEMAKER_BIND_TO_PORT=<port>")
    files = sorted(os.listdir(source))
    record({{"run": name, "image": rest[0], "mount": source, "env": list(env.items()),
             "devices": devices, "model_files": files, "pid": os.getpid()}})
    with open(os.path.join(STATE, name + ".pid"), "w") as pid_file:
        pid_file.write(str(os.getpid()))
    os.chdir(REPO)
    python = {python!r}
    os.execve(python, [python, "-m", "examples.model_server", "--host", "127.0.0.1",
                       "--port", port], env)


def rm(args):
    if len(args) != 2 or args[0] != "-f":
        refuse(f"expected rm -f NAME, got {{args}}")
    path = os.path.join(STATE, args[1] + ".pid")
    try:
        with open(path) as pid_file:
            pid = int(pid_file.read())
    except FileNotFoundError:
        record({{"rm": args[1], "known": False}})
        print(f"Error response from daemon: No such container: {{args[1]}}", file=sys.stderr)
        sys.exit(1)
    running = alive(pid)
    record({{"rm": args[1], "known": True, "running": running, "pid": pid}})
    if running:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    os.remove(path)


if len(sys.argv) < 2 or sys.argv[1] not in ("run", "rm"):
    refuse(f"this stand-in knows only run and rm, got {{sys.argv[1:2]}}")
(run if sys.argv[1] == "run" else rm)(sys.argv[2:])
"""


def install(directory: Path) -> Path:
    """Write ``docker`` and ``podman`` into ``directory``; return it (to put on PATH)."""
    directory.mkdir(parents=True, exist_ok=True)
    source = _SCRIPT.format(
        python=sys.executable, state=str(directory), repo=str(REPO_ROOT), log=LOG_VARIABLE
    )
    for engine in ("docker", "podman"):
        path = directory / engine
        path.write_text(source)
        path.chmod(0o755)
    return directory


def calls(log: Path) -> list[dict[str, Any]]:
    """Every call the stand-in recorded in ``log``, in order."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line]


def pid_file(directory: Path, name: str) -> Path:
    """Where the stand-in keeps the pid of container ``name``'s server."""
    return directory / f"{name}.pid"


def engine_environment(directory: Path, log: Path) -> dict[str, str]:
    """An environment for the engine's client: the stand-in first on PATH, the log file."""
    return {"PATH": f"{directory}{os.pathsep}{os.environ.get('PATH', '')}", LOG_VARIABLE: str(log)}
