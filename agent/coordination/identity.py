"""Who this instance is: its index, of how many instances, and where that came from.

``resolve_identity`` is pure: it takes the command-line values, the job's InstanceCount
and an environment mapping, and says which instance this is, of how many, and where that
came from (for the log). Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent.errors import UsageError
from agent.job import MAX_INSTANCE_COUNT


class IdentityError(UsageError, ValueError):
    """The instance's index or count cannot be worked out; the caller exits 2."""


@dataclass(frozen=True, slots=True)
class Identity:
    """This instance: ``index`` of ``count`` (0-based), and where those numbers came from."""

    index: int
    count: int
    source: str  # for the log: "--instance-index", "JOB_COMPLETION_INDEX (Kubernetes…)", …
    warning: str | None = None  # something the operator should hear about, once

    def __str__(self) -> str:
        return f"instance {self.index} of {self.count} (from {self.source})"


def _int(
    env: Mapping[str, str], name: str, minimum: int = 0, maximum: int | None = None
) -> int | None:
    """The integer in ``env[name]``; ``None`` when unset or blank."""
    text = env.get(name, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise IdentityError(f"{name}={text!r} is not an integer") from None
    if value < minimum:
        raise IdentityError(f"{name}={value} must be {minimum} or more")
    if maximum is not None and value > maximum:
        raise IdentityError(f"{name}={value} is more than {maximum}, the most instances allowed")
    return value


def resolve_identity(
    env: Mapping[str, str],
    *,
    flag_index: int | None = None,
    flag_count: int | None = None,
    job_count: int = 1,
) -> Identity:
    """Who this instance is: flags first, then the orchestrator's variables, else 0 of 1.

    The count comes from ``--instance-count``, else from the orchestrator when it says
    (``AWS_BATCH_JOB_ARRAY_SIZE``, ``SLURM_ARRAY_TASK_COUNT``), else from the job's
    ``InstanceCount``. Kubernetes indexed Jobs expose no count, so there it is the flag's
    or the job's. Slurm task ids are made 0-based by ``SLURM_ARRAY_TASK_MIN`` and
    ``SLURM_ARRAY_TASK_STEP`` (``--array=1-8`` and ``--array=0-15:4`` both work).
    Raises ``IdentityError`` when a variable is malformed or the index is out of range.
    """
    if flag_index is not None:
        return _checked(flag_index, flag_count or job_count, "--instance-index", job_count)
    if (index := _int(env, "JOB_COMPLETION_INDEX")) is not None:
        source = "JOB_COMPLETION_INDEX (Kubernetes indexed Job)"
        return _checked(index, flag_count or job_count, source, job_count)
    if (index := _int(env, "AWS_BATCH_JOB_ARRAY_INDEX")) is not None:
        size = _int(env, "AWS_BATCH_JOB_ARRAY_SIZE", minimum=1, maximum=MAX_INSTANCE_COUNT)
        source = "AWS_BATCH_JOB_ARRAY_INDEX (AWS Batch array job)"
        return _checked(index, flag_count or size or job_count, source, job_count)
    if (task := _int(env, "SLURM_ARRAY_TASK_ID")) is not None:
        return _slurm(env, task, flag_count, job_count)
    count = flag_count or 1
    warning = None
    if flag_count is None and job_count > 1:
        warning = (
            f"the job asks for InstanceCount {job_count}, but no instance index was given "
            "(--instance-index, JOB_COMPLETION_INDEX, AWS_BATCH_JOB_ARRAY_INDEX or "
            "SLURM_ARRAY_TASK_ID): this instance runs as instance 0 of 1 and does every file"
        )
    return _checked(0, count, "no index given: the default", job_count, warning)


def _slurm(env: Mapping[str, str], task: int, flag_count: int | None, job_count: int) -> Identity:
    first = _int(env, "SLURM_ARRAY_TASK_MIN") or 0
    step = _int(env, "SLURM_ARRAY_TASK_STEP", minimum=1) or 1
    offset = task - first
    if offset < 0 or offset % step:
        raise IdentityError(
            f"SLURM_ARRAY_TASK_ID={task} does not fit the array (first task {first}, step "
            f"{step}); for arrays with gaps (--array=1,3,7) pass --instance-index yourself"
        )
    count = (
        flag_count
        or _int(env, "SLURM_ARRAY_TASK_COUNT", minimum=1, maximum=MAX_INSTANCE_COUNT)
        or job_count
    )
    source = "SLURM_ARRAY_TASK_ID (Slurm job array)"
    return _checked(offset // step, count, source, job_count)


def _checked(
    index: int, count: int, source: str, job_count: int, warning: str | None = None
) -> Identity:
    if count > MAX_INSTANCE_COUNT:
        raise IdentityError(
            f"{count} instances is more than {MAX_INSTANCE_COUNT}, the most a job may have "
            "(SageMaker's limit on TransformResources.InstanceCount)"
        )
    if index >= count:
        raise IdentityError(
            f"instance index {index} (from {source}) is out of range for {count} instance(s), "
            f"numbered 0 to {count - 1}; set --instance-count or TransformResources.InstanceCount"
        )
    if warning is None and count != job_count and source != "no index given: the default":
        warning = (
            f"the job's InstanceCount is {job_count}, but {count} instances share the work; "
            f"files are planned over {count}"
        )
    return Identity(index, count, source, warning)
