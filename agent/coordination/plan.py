"""Which instance does which file: its identity, and the static plan (docs/design.md §4.1, §4.3).

``resolve_identity`` is pure: it takes the command-line values, the job's InstanceCount
and an environment mapping, and says which instance this is, of how many, and where that
came from (for the log). ``static_plan`` spreads whole files over the instances by size
with the longest-processing-time greedy rule, deterministically, so every instance that
plans over the same listing snapshot computes the same assignment without talking to the
others. Nothing here does I/O.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent.errors import UsageError
from agent.job.schema import MAX_INSTANCE_COUNT
from agent.storage.inputs import InputFile


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


# ---------------------------------------------------------------------- the static plan


@dataclass(frozen=True, slots=True)
class Share:
    """What one instance gets: its files in processing order (largest first), and bytes."""

    index: int
    files: tuple[InputFile, ...]
    bytes: int


@dataclass(frozen=True, slots=True)
class StaticPlan:
    """Every instance's share of one listing snapshot, over ``count`` instances.

    ``shares`` holds one entry per instance that gets files, and no more: with more
    instances than files, the instances past the last file get nothing, and no entry is
    made for them (``share`` answers for any index), so a plan's size follows the files.
    """

    shares: tuple[Share, ...]
    count: int

    @property
    def total_bytes(self) -> int:
        return sum(share.bytes for share in self.shares)

    @property
    def imbalance(self) -> float:
        """Expected imbalance: the largest share's bytes over the mean (1.0 is perfect)."""
        mean = self.total_bytes / self.count
        return max(share.bytes for share in self.shares) / mean if mean else 1.0

    def share(self, index: int) -> Share:
        if not 0 <= index < self.count:
            raise IndexError(f"instance {index} is not one of the plan's {self.count}")
        return self.shares[index] if index < len(self.shares) else Share(index, (), 0)


def file_size(item: InputFile) -> int:
    """The bytes a file weighs in the plan (a missing manifest entry weighs nothing)."""
    return item.info.size if item.info is not None else 0


def largest_first(files: Sequence[InputFile]) -> list[InputFile]:
    """Files by size, largest first, ties broken by URI: the order LPT needs."""
    return sorted(files, key=lambda item: (-file_size(item), str(item.uri)))


def static_plan(files: Sequence[InputFile], count: int) -> StaticPlan:
    """Spread whole files over ``count`` instances, balanced by bytes, deterministically.

    Longest-processing-time greedy: each file, largest first, goes to the instance with
    the fewest bytes so far (then the fewest files, so empty files spread too, then the
    lowest index). Its makespan is within 4/3 of the best possible. Every instance gets
    the same answer from the same snapshot, whatever order the files were listed in.
    """
    if count < 1:
        raise ValueError(f"an instance count of {count}; it must be 1 or more")
    # With more instances than files, the first files each go to an instance of their own,
    # lowest index first, and the rest get none: the heap (and the plan) need only as many
    # instances as there are files.
    used = max(1, min(count, len(files)))
    heap = [(0, 0, index) for index in range(used)]
    assigned: list[list[InputFile]] = [[] for _ in range(used)]
    for item in largest_first(files):
        load, number, index = heapq.heappop(heap)
        assigned[index].append(item)
        heapq.heappush(heap, (load + file_size(item), number + 1, index))
    shares = tuple(
        Share(index, tuple(chosen), sum(file_size(item) for item in chosen))
        for index, chosen in enumerate(assigned)
    )
    return StaticPlan(shares, count)


def format_plan(plan: StaticPlan, *, done: frozenset[str] = frozenset()) -> list[str]:
    """The plan as lines for ``bt-agent plan``: per instance its bytes and files.

    ``done`` holds the URIs of files already completed (skipped when the job runs).
    """
    total_files = sum(len(share.files) for share in plan.shares)
    lines = [
        f"{total_files} files, {plan.total_bytes} bytes over {plan.count} instance(s); "
        f"expected imbalance {plan.imbalance:.3f} (largest share / mean share, by bytes)"
    ]
    for share in plan.shares:
        skipped = sum(str(item.uri) in done for item in share.files)
        note = f", {skipped} already completed" if skipped else ""
        lines.append(f"instance {share.index}: {len(share.files)} files, {share.bytes} bytes{note}")
        for item in share.files:
            mark = " (completed)" if str(item.uri) in done else ""
            lines.append(f"  {file_size(item):>14}  {item.uri}{mark}")
    idle = plan.count - len(plan.shares)
    if idle == 1:
        lines.append(f"instance {plan.count - 1}: 0 files, 0 bytes")
    elif idle > 1:
        lines.append(f"instances {len(plan.shares)} to {plan.count - 1}: 0 files, 0 bytes each")
    return lines
