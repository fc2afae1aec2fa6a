"""Where a profile's time goes: ``python -m bench.pyspy_top FILE [--top 25] [--under NAME]``.

Reads the raw (collapsed-stack) files ``python -m bench.e2e --py-spy DIR`` writes, one
per run, and prints the frames with the most samples, by self time and inclusive time.
``--under NAME`` keeps only the stacks through a frame whose text contains NAME (for
example ``Pipeline._request``) and ``--skip-imports`` drops start-up imports, so two
programs' steady states can be set side by side. py-spy counts wall-clock samples of
threads that are not idle: on a busy machine they overstate CPU, so read them as shares.
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

_FRAME = re.compile(r"(?P<func>.*) \((?P<file>.*?):(?P<line>\d+)\)")


def short(frame: str) -> str:
    """``func (file.py:12)`` → ``func (package/file.py)``, without the environment's prefix."""
    found = _FRAME.fullmatch(frame)
    if found is None:
        return frame
    path = found["file"].split("site-packages/")[-1]
    for marker in ("/agent/", "/bench/"):
        if marker in path:
            path = marker[1:] + path.split(marker, 1)[1]
    return f"{found['func']} ({path})"


def load(path: Path) -> list[tuple[list[str], int]]:
    """Each stack (outermost frame first) with its sample count."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            stacks.append((stack.split(";"), int(count)))
    return stacks


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pyspy_top", description=__doc__)
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--under", help="only stacks through a frame containing this")
    parser.add_argument("--skip-imports", action="store_true")
    args = parser.parse_args()
    stacks = load(args.file)
    if args.under:
        stacks = [(s, n) for s, n in stacks if any(args.under in frame for frame in s)]
    if args.skip_imports:
        stacks = [(s, n) for s, n in stacks if not any("_find_and_load" in f for f in s)]
    total = sum(n for _, n in stacks) or 1
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for stack, count in stacks:
        frames = [short(f) for f in stack if not f.startswith(("process ", "thread "))]
        if frames:
            own[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
    print(f"{args.file.name}: {total} samples")
    for title, counter in (("self", own), ("inclusive", inclusive)):
        print(f"--- {title}")
        for frame, count in counter.most_common(args.top):
            print(f"{100 * count / total:5.1f}% {count:6d}  {frame}")


if __name__ == "__main__":
    main()
