"""pytest-benchmark groups per format × batch strategy, over both twins.

Run from the repository root: ``python -m pytest bench/test_split_bench.py``
(``--benchmark-only`` to skip nothing else, ``-k native`` for one twin). Inputs are
smaller than ``python -m bench.split`` uses, 4 MiB for every case, so that each group
compares the same input and a full run takes well under a minute.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import Any

import pytest

from agent._compat import NO_EXTENSIONS
from bench.split import DATA, MiB, baseline_lines, chunked, split_pass

MIB = 4
CASES = [
    (kind, strategy)
    for kind in ("Line", "RecordIO", "TFRecord", "None")
    for strategy in ("MultiRecord", "SingleRecord")
    if not (kind == "None" and strategy == "SingleRecord")
]


@functools.cache
def _chunks(kind: str, mib: int) -> list[bytes]:
    return chunked(DATA[kind](mib * MiB), MiB)


@pytest.fixture(params=["native", "pure"])
def twin(request: pytest.FixtureRequest) -> ModuleType:
    if request.param == "native":
        if NO_EXTENSIONS:
            pytest.skip("BT_AGENT_NO_EXTENSIONS=1")
        return importlib.import_module("agent.split._splitters_c")
    return importlib.import_module("agent.split._splitters_py")


@pytest.mark.parametrize(("kind", "strategy"), CASES)
def test_split(benchmark: Any, twin: ModuleType, kind: str, strategy: str) -> None:
    chunks = _chunks(kind, MIB)
    bound = 0 if kind == "None" else 6 * MiB
    benchmark.group = f"{kind} {strategy}"
    benchmark.extra_info["MiB"] = MIB
    records = benchmark(split_pass, twin, kind, strategy, bound, chunks)
    assert records > 0


@pytest.mark.parametrize("strategy", ["MultiRecord", "SingleRecord"])
def test_baseline_for_line_in_file(benchmark: Any, strategy: str) -> None:
    data = b"".join(_chunks("Line", MIB))
    benchmark.group = f"Line {strategy}"
    benchmark.extra_info["MiB"] = MIB
    benchmark(baseline_lines, data, strategy == "SingleRecord", 6 * MiB)
