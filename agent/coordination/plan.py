"""Which instance does which file under Static coordination: the static plan
(docs/design.md §4.3).

``static_plan`` spreads whole files over the instances by size with the
longest-processing-time greedy rule, deterministically, so every instance that plans over
the same listing snapshot computes the same assignment without talking to the others. It
is computed once per start (by the coordinator's factory for a run, by ``bt-agent plan``
for the view) and handed on. Nothing here does I/O.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from agent.storage import InputFile


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


def largest_first(files: Sequence[InputFile]) -> list[InputFile]:
    """Files (and shards) by size, largest first, ties broken by URI, then by a shard's
    place in its file: the order LPT needs."""
    return sorted(files, key=lambda item: (-item.weight, str(item.uri), _place(item)))


def _place(item: InputFile) -> int:
    return 0 if item.shard is None else item.shard.index


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
        heapq.heappush(heap, (load + item.weight, number + 1, index))
    shares = tuple(
        Share(index, tuple(chosen), sum(item.weight for item in chosen))
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
            if (shard := item.shard) is not None:
                mark = f" shard {shard.index + 1}/{shard.count} [{shard.start}, {shard.end})"
                mark += " (completed)" if item.id in done else ""
            lines.append(f"  {item.weight:>14}  {item.uri}{mark}")
    idle = plan.count - len(plan.shares)
    if idle == 1:
        lines.append(f"instance {plan.count - 1}: 0 files, 0 bytes")
    elif idle > 1:
        lines.append(f"instances {len(plan.shares)} to {plan.count - 1}: 0 files, 0 bytes each")
    return lines
