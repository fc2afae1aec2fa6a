"""The model's container (README "The model server", "A killed agent and its containers";
docs/design.md §1.4): which engine runs it, its name, the ``run`` and ``rm -f`` commands.

The container is started as a command like any ``Agent.ModelCommand``: ``run_argv`` gives
the argv, which ``ModelProcess`` (``agent/model/process.py``) runs in the foreground, so
the engine's client is watched and stopped like a model command. Killing the client does
not always stop the container (a SIGKILLed agent leaves it running), so the container is
also removed by name when the run ends: ``stop_container``, whatever the outcome. Every
name starts with ``NAME_PREFIX``, so ``docker ps --filter name=bt-agent-`` finds what a
``kill -9`` left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import shutil
from collections.abc import Mapping, Sequence

from agent.errors import BtAgentError
from agent.job import JobSettings
from agent.model.environment import model_environment

__all__ = [
    "CONTAINER_MODEL_DIR",
    "NAME_PREFIX",
    "RUNTIMES",
    "ContainerError",
    "container_environment",
    "container_name",
    "find_runtime",
    "loggable_argv",
    "run_argv",
    "stop_argv",
    "stop_container",
]

log = logging.getLogger("agent.model_process")

RUNTIMES = ("docker", "podman")  # the order ``find_runtime`` looks for them on PATH
NAME_PREFIX = "bt-agent-"
CONTAINER_MODEL_DIR = "/opt/ml/model"  # where SageMaker containers find their artifacts
PORT_VARIABLE = "SAGEMAKER_BIND_TO_PORT"  # the port a SageMaker container listens on
_JOB_NAME_CHARS = 32  # of the job's name in a container name; the rest is suffix and replica
_NOT_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_.-]+")
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# One per agent process: the containers of one run share it, so a run's are found together.
_RUN_SUFFIX = f"{os.getpid():x}{secrets.token_hex(2)}"
_STOP_OUTPUT_BYTES = 4096


class ContainerError(BtAgentError, RuntimeError):
    """The model's container cannot be started as asked; the message says what to change."""


def find_runtime(preferred: str | None, path: str | None = None) -> str:
    """The absolute path of the container engine's command.

    ``preferred`` is ``Agent.ContainerRuntime`` (``docker`` or ``podman``): it must be on
    ``path`` (default: ``$PATH``). Without it, the first of ``RUNTIMES`` found there.
    """
    if preferred is not None:
        if preferred not in RUNTIMES:
            raise ContainerError(
                f"Agent.ContainerRuntime is {preferred!r}; it must be one of {', '.join(RUNTIMES)}"
            )
        found = shutil.which(preferred, path=path)
        if found is None:
            raise ContainerError(
                f"Agent.ContainerRuntime is {preferred!r}, but no executable {preferred!r} "
                "is on PATH; install it, add its directory to PATH, or set "
                "Agent.ContainerRuntime to the engine that is installed"
            )
        return found
    for runtime in RUNTIMES:
        found = shutil.which(runtime, path=path)
        if found is not None:
            return found
    raise ContainerError(
        "the model runs in a container, but neither docker nor podman is on PATH; install "
        "one of them (or add its directory to PATH), or set Agent.ModelCommand to start the "
        "model server without a container"
    )


def _kind(runtime: str) -> str:
    """``docker`` or ``podman``: the engine ``runtime`` (a name or a path) is."""
    kind = os.path.basename(runtime)
    if kind not in RUNTIMES:
        raise ContainerError(
            f"the container engine {runtime!r} is neither docker nor podman; give one of them "
            "in Agent.ContainerRuntime"
        )
    return kind


def container_name(job_name: str, replica: int) -> str:
    """``bt-agent-<job>-<suffix>-r<replica>``: one name per run and replica.

    The suffix is the agent's pid and a random part, the same for every replica of this
    process, so ``docker ps --filter name=bt-agent-<job>-<suffix>`` finds one run's
    containers. A replica started again gets the same name: ``stop_container`` first.
    Valid for both engines (``[a-zA-Z0-9][a-zA-Z0-9_.-]*``).
    """
    if replica < 0:
        raise ContainerError(f"replica numbers start at 0; got {replica}")
    job = _NOT_NAME_CHARS.sub("-", job_name)[:_JOB_NAME_CHARS].strip("-_.") or "job"
    return f"{NAME_PREFIX}{job}-{_RUN_SUFFIX}-r{replica}"


def container_environment(
    settings: JobSettings,
    model_definition: Mapping[str, str] | None = None,
    *,
    port: int | None = None,
) -> dict[str, str]:
    """The variables a container gets, in the order of its ``-e`` flags.

    The model definition's ``Environment``, then the job's ``Environment`` over it, then the
    ``SAGEMAKER_*`` variables the agent sets (``model_environment``) and, with ``port``,
    ``SAGEMAKER_BIND_TO_PORT``. None of the agent's own variables: the image has its own
    ``PATH`` and libraries, and the host's would break them. No ``CUDA_VISIBLE_DEVICES``
    either: the engine's GPU flag (``run_argv``'s ``device``) chooses the device, and the
    container sees it renumbered from 0.
    """
    env = dict(model_definition or {})
    env.update(model_environment(settings, base={}))
    if port is not None:
        env[PORT_VARIABLE] = str(port)
    return env


def _device_flags(kind: str, device: str) -> list[str]:
    ids = [part for part in device.split(",") if part]
    if not ids:
        raise ContainerError(f"the device {device!r} of Agent.ReplicaDevices names no device")
    if kind == "docker":
        # --gpus reads a CSV list: several ids need quotes inside the argument itself.
        spec = f"device={','.join(ids)}"
        return ["--gpus", spec if len(ids) == 1 else f'"{spec}"']
    flags: list[str] = []
    for one in ids:  # podman: one CDI device per id
        flags += ["--device", f"nvidia.com/gpu={one}"]
    return flags


def run_argv(
    runtime: str,
    name: str,
    image: str,
    model_dir: str,
    environment: Mapping[str, str],
    *,
    device: str | None,
) -> list[str]:
    """``<runtime> run --rm --name <name> --network host -v <model_dir>:/opt/ml/model:ro
    -e K=V … [device flags] <image> serve``.

    ``runtime`` is ``find_runtime``'s answer (docker or podman, by name or path); the
    ``-e`` flags follow ``environment``'s order (see ``container_environment``). ``model_dir``
    is made absolute (a relative source would name a volume, not the directory). ``device``
    is one ``Agent.ReplicaDevices`` entry: ``--gpus device=<d>`` for docker (``"device=0,1"``,
    quotes included, for several), ``--device nvidia.com/gpu=<d>`` per id for podman (CDI).

    The values of the ``-e`` flags may be secrets: never log this argv as it is; log
    ``loggable_argv(argv)``, which keeps the variables' names only.
    """
    kind = _kind(runtime)
    source = os.path.abspath(model_dir)
    if ":" in source or "," in source:
        raise ContainerError(
            f"Agent.ModelDir {source!r} holds a ':' or ',', which the engine's -v flag cannot "
            "carry; choose a directory without them"
        )
    argv = [runtime, "run", "--rm", "--name", name, "--network", "host"]
    argv += ["-v", f"{source}:{CONTAINER_MODEL_DIR}:ro"]
    for variable, value in environment.items():
        if not _VARIABLE_NAME.fullmatch(variable):
            raise ContainerError(
                f"the environment variable name {variable!r} cannot be passed to the "
                "container; use letters, digits and underscores, not starting with a digit"
            )
        if "\0" in value:
            raise ContainerError(
                f"the value of the environment variable {variable} holds a NUL character, "
                "which no process can be given"
            )
        argv += ["-e", f"{variable}={value}"]
    if device is not None:
        argv += _device_flags(kind, device)
    argv += [image, "serve"]
    return argv


def loggable_argv(argv: Sequence[str]) -> str:
    """``argv`` for a log line: each ``-e K=V`` shown as ``-e K``, never its value."""
    shown: list[str] = []
    after_e = False
    for part in argv:
        shown.append(part.split("=", 1)[0] if after_e else part)
        after_e = part == "-e"
    return " ".join(shown)


def stop_argv(runtime: str, name: str) -> list[str]:
    """``<runtime> rm -f <name>``: stop the container (SIGKILL) and remove it."""
    return [runtime, "rm", "-f", name]


async def stop_container(
    runtime: str, name: str, timeout: float, *, env: Mapping[str, str] | None = None
) -> None:
    """Run ``stop_argv``; never raises, logs what went wrong (README "A killed agent …").

    ``env`` is the engine client's environment (default: the agent's), as for ``run``.

    "No such container" is the usual answer (``--rm`` removed it when it stopped) and is
    logged at debug level only. A hung engine is killed after ``timeout`` seconds. If the
    caller is cancelled meanwhile, the engine is killed too (with a warning) and the
    cancellation proceeds: shield the call where the removal must finish.
    """
    argv = stop_argv(runtime, name)
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=None if env is None else dict(env),
        )
    except OSError as error:
        log.warning(
            "could not remove the model's container %s: %s cannot run (%s); remove it with `%s`",
            name,
            runtime,
            error.strerror or error,
            " ".join(argv),
        )
        return
    except asyncio.CancelledError:
        # Cancelled while the engine was being started: asyncio kills what it started.
        _warn_stopped(argv, "was cancelled", runtime, name)
        raise
    try:
        _, output = await asyncio.wait_for(process.communicate(), timeout)
    except (TimeoutError, asyncio.CancelledError) as stopped:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()  # at once after SIGKILL; no engine is left behind
        how = (
            f"did not finish in {timeout:g} s"
            if isinstance(stopped, TimeoutError)
            else "was cancelled"
        )
        _warn_stopped(argv, how, runtime, name)
        if isinstance(stopped, asyncio.CancelledError):
            raise
        return
    text = output[:_STOP_OUTPUT_BYTES].decode("utf-8", "replace").strip()
    if process.returncode == 0:
        log.debug("removed the model's container %s", name)
    elif "no such container" in text.lower() or "no container with name" in text.lower():
        log.debug("the model's container %s was already gone", name)
    else:
        log.warning(
            "`%s` exited with status %d: %s; the container may still run: check with "
            "`%s ps --filter name=%s`",
            " ".join(argv),
            process.returncode,
            text or "(no output)",
            os.path.basename(runtime),
            name,
        )


def _warn_stopped(argv: list[str], how: str, runtime: str, name: str) -> None:
    log.warning(
        "`%s` %s; the container may still run: check with `%s ps --filter name=%s`",
        " ".join(argv),
        how,
        os.path.basename(runtime),
        name,
    )
